//! K-means assignment vs sklearn `KMeans.predict` (K = 1000, D = 768, 10,000 vectors), with the
//! centroids read from .npy and from the joblib converter's safetensors. Reference from
//! `tests/reference/kmeans.py` (`make reference`).

use tch::{Device, Kind, Tensor};
use tolk_models::units::{dedup, KMeans};
use tolk_tests::{read_tensors, reference_dir};

#[test]
fn assignments_identical_to_sklearn() {
    let dir = reference_dir("kmeans");
    let r = read_tensors(&dir.join("reference.safetensors"));
    let expected: Vec<i64> = Vec::try_from(&r["labels"]).unwrap();
    for file in ["centroids.npy", "converted.safetensors"] {
        let km = KMeans::load(&dir.join(file), Device::Cpu, Kind::Float).unwrap();
        assert_eq!((km.k(), km.dim()), (1000, 768));
        let t = std::time::Instant::now();
        let got = km.assign_vec(&r["x"]).unwrap();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let differ: Vec<usize> = (0..got.len())
            .filter(|&i| i64::from(got[i]) != expected[i])
            .collect();
        let margins = r["margin"].to_kind(Kind::Double);
        let worst_margin = differ
            .iter()
            .map(|&i| margins.double_value(&[i as i64]))
            .fold(f64::NAN, f64::max);
        println!(
            "kmeans {file}: {} of {} assignments differ from sklearn (largest distance margin \
             among them {worst_margin:.3e}; smallest margin overall {:.3e}); {ms:.0} ms",
            differ.len(),
            got.len(),
            margins.min().double_value(&[])
        );
        assert!(differ.is_empty(), "{file}: rows {differ:?} differ");
    }
}

#[test]
fn bad_centroid_files_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("c.safetensors");
    Tensor::write_safetensors(
        &[("centroids", Tensor::zeros([4], (Kind::Float, Device::Cpu)))],
        &p,
    )
    .unwrap();
    let e = KMeans::load(&p, Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[K, D]"), "{e}");
    let p = tmp.path().join("c.txt");
    std::fs::write(&p, "1 2 3").unwrap();
    assert!(KMeans::load(&p, Device::Cpu, Kind::Float).is_err());
    let p = tmp.path().join("broken.npy");
    std::fs::write(&p, b"\x93NUMPY garbage").unwrap();
    assert!(KMeans::load(&p, Device::Cpu, Kind::Float).is_err());
    assert!(KMeans::load(&tmp.path().join("none.npy"), Device::Cpu, Kind::Float).is_err());
    let nan = Tensor::from_slice(&[0.0f32, f32::NAN]).view([1, 2]);
    assert!(KMeans::new(nan).is_err());
}

#[test]
fn dedup_of_sklearn_labels_round_trips() {
    let r = read_tensors(&reference_dir("kmeans").join("reference.safetensors"));
    let labels: Vec<i64> = Vec::try_from(&r["labels"]).unwrap();
    // Repeat every label a varying number of times, as 50 Hz frames do.
    let mut frames = Vec::new();
    for (i, &l) in labels.iter().take(500).enumerate() {
        frames.extend(std::iter::repeat_n(
            l as tolk_models::units::UnitId,
            1 + i % 4,
        ));
    }
    let d = dedup(&frames);
    let back: Vec<tolk_models::units::UnitId> = d
        .units
        .iter()
        .zip(&d.durations)
        .flat_map(|(&u, &n)| std::iter::repeat_n(u, n))
        .collect();
    assert_eq!(back, frames);
    assert!(d.units.windows(2).all(|w| w[0] != w[1]));
}
