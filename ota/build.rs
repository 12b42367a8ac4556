fn main() {
    tolk_build::link_libtorch();
}
