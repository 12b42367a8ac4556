//! The libtorch linking pitfalls of the foundation: libtorch_cuda must be a real dependency of
//! every binary (rustc links with --as-needed, which would drop it and make CUDA read as
//! unavailable on a GPU machine).

#[test]
fn libtorch_cuda_is_loaded_when_the_wheel_has_it() {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let torch_cpu = maps
        .lines()
        .find(|l| l.contains("libtorch_cpu.so"))
        .expect("libtorch_cpu is mapped");
    let lib_dir = std::path::Path::new(torch_cpu.split_whitespace().last().unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    if lib_dir.join("libtorch_cuda.so").exists() {
        assert!(
            maps.contains("libtorch_cuda.so"),
            "libtorch_cuda.so exists in {} but was not linked",
            lib_dir.display()
        );
    }
    // Without a GPU the query answers false rather than failing.
    println!("CUDA available: {}", tch::Cuda::is_available());
}
