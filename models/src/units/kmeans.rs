//! K-means speech units: nearest-centroid assignment (batched on the device), deduplication of
//! repeated units with their run lengths, and mini-batch k-means fitting with k-means++ seeding.
//!
//! Assignment matches sklearn `KMeans.predict` (`sklearn/cluster/_k_means_lloyd.pyx`):
//! `argmin_k |x|^2 - 2 x.C_k + |C_k|^2` (the `|x|^2` term does not change the argmin and is left
//! out, as sklearn does). Fitting follows Sculley (2010) "Web-scale k-means clustering" with the
//! k-means++ seeding of Arthur & Vassilvitskii (2007), as sklearn's `MiniBatchKMeans`.

use crate::{ModelError, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Rows assigned per matrix product (bounds the `[rows, K]` distance matrix).
const ASSIGN_BLOCK: i64 = 4096;

/// K centroids of dimension D.
#[derive(Debug)]
pub struct KMeans {
    centroids: Tensor,
    /// `|C_k|^2`, precomputed.
    sq_norms: Tensor,
}

// SAFETY: the centroids are only read after construction (no in-place operation on them), and
// libtorch allows concurrent reads, so one `KMeans` can serve streams on several threads.
unsafe impl Sync for KMeans {}

impl KMeans {
    /// Centroids `[K, D]` (K >= 1, D >= 1, all finite).
    pub fn new(centroids: Tensor) -> Result<Self> {
        if centroids.dim() != 2 || centroids.size()[0] < 1 || centroids.size()[1] < 1 {
            return Err(ModelError::InvalidArgument(format!(
                "k-means centroids must be a non-empty [K, D] matrix, got shape {:?}",
                centroids.size()
            )));
        }
        if centroids.f_isfinite()?.f_all()?.int64_value(&[]) == 0 {
            return Err(ModelError::InvalidArgument(
                "k-means centroids contain NaN or infinite values".into(),
            ));
        }
        let sq_norms = centroids.f_pow_tensor_scalar(2)?.f_sum_dim_intlist(
            [1i64].as_slice(),
            false,
            centroids.kind(),
        )?;
        Ok(Self {
            centroids,
            sq_norms,
        })
    }

    /// Reads centroids from a `.npy` file (a float `[K, D]` array) or a `.safetensors` file
    /// (tensor `centroids`, or its only tensor), converted to `kind` on `device`.
    pub fn load(path: &Path, device: Device, kind: Kind) -> Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let t = match ext {
            "npy" => {
                if !path.exists() {
                    return Err(ModelError::io(
                        path,
                        std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                    ));
                }
                Tensor::read_npy(path).map_err(|e| ModelError::Safetensors {
                    path: path.to_path_buf(),
                    message: format!("not a readable .npy array: {e}"),
                })?
            }
            "safetensors" => {
                let (mut tensors, _) =
                    crate::checkpoint::read_safetensors(path, kind, Device::Cpu, |_| true)?;
                if let Some(i) = tensors.iter().position(|(n, _)| n == "centroids") {
                    tensors.swap_remove(i).1
                } else if tensors.len() == 1 {
                    tensors.pop().map(|(_, t)| t).unwrap_or_else(Tensor::new)
                } else {
                    return Err(ModelError::config(
                        path,
                        "centroids",
                        "no tensor named `centroids` and not exactly one tensor",
                    ));
                }
            }
            _ => {
                return Err(ModelError::InvalidArgument(format!(
                    "{}: centroid files must end in .npy or .safetensors",
                    path.display()
                )))
            }
        };
        if !matches!(
            t.kind(),
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
        ) {
            return Err(ModelError::config(
                path,
                "centroids",
                format!("expected a floating-point array, found {:?}", t.kind()),
            ));
        }
        Self::new(t.f_to_kind(kind)?.f_to_device(device)?)
            .map_err(|e| ModelError::config(path, "centroids", e.to_string()))
    }

    /// Writes the centroids as safetensors (tensor `centroids`).
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::checkpoint::save_safetensors(
            path,
            &[(
                "centroids".to_string(),
                self.centroids.f_to_kind(Kind::Float)?,
            )],
        )
    }

    pub fn k(&self) -> i64 {
        self.centroids.size()[0]
    }

    pub fn dim(&self) -> i64 {
        self.centroids.size()[1]
    }

    pub fn centroids(&self) -> &Tensor {
        &self.centroids
    }

    /// Nearest centroid of each row of `x` (`[T, D]`), as an int64 tensor `[T]` on the
    /// centroids' device. `T` may be 0.
    pub fn assign(&self, x: &Tensor) -> Result<Tensor> {
        if x.dim() != 2 || x.size()[1] != self.dim() {
            return Err(ModelError::InvalidArgument(format!(
                "features of shape {:?} do not match k-means centroids of dimension {}",
                x.size(),
                self.dim()
            )));
        }
        let x = x
            .f_to_device(self.centroids.device())?
            .f_to_kind(self.centroids.kind())?;
        let t = x.size()[0];
        let mut parts = Vec::new();
        let mut start = 0;
        while start < t {
            let n = ASSIGN_BLOCK.min(t - start);
            let xb = x.f_narrow(0, start, n)?;
            // |C|^2 - 2 x.C^T (the ordering of sklearn's gemm with alpha -2, beta 1).
            let d = xb.f_matmul(&self.centroids.f_tr()?)? * -2.0 + self.sq_norms.f_unsqueeze(0)?;
            parts.push(d.f_argmin(1, false)?);
            start += n;
        }
        if parts.is_empty() {
            return Ok(Tensor::f_zeros(
                [0],
                (Kind::Int64, self.centroids.device()),
            )?);
        }
        Ok(Tensor::f_cat(&parts, 0)?)
    }

    /// [`KMeans::assign`] as a vector.
    pub fn assign_vec(&self, x: &Tensor) -> Result<Vec<super::UnitId>> {
        let a = self.assign(x)?.f_to_device(Device::Cpu)?;
        // Cluster indices are in 0..K, K far below u32::MAX.
        Ok(Vec::<i64>::try_from(&a)?
            .into_iter()
            .map(|u| u as super::UnitId)
            .collect())
    }

    /// Sum over rows of the squared distance to the nearest centroid.
    pub fn inertia(&self, x: &Tensor) -> Result<f64> {
        let a = self.assign(x)?;
        let c = self.centroids.f_index_select(0, &a)?;
        let x = x
            .f_to_device(self.centroids.device())?
            .f_to_kind(self.centroids.kind())?;
        Ok((x - c)
            .f_pow_tensor_scalar(2)?
            .f_sum(Kind::Double)?
            .double_value(&[]))
    }
}

/// Units with repeats collapsed: `units[i]` was repeated `durations[i]` times.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Deduped {
    pub units: Vec<super::UnitId>,
    pub durations: Vec<usize>,
}

/// Drops every unit equal to its predecessor, keeping run lengths.
pub fn dedup(units: &[super::UnitId]) -> Deduped {
    let mut out = Deduped::default();
    for &u in units {
        match (out.units.last(), out.durations.last_mut()) {
            (Some(&last), Some(d)) if last == u => *d += 1,
            _ => {
                out.units.push(u);
                out.durations.push(1);
            }
        }
    }
    out
}

/// Mini-batch k-means settings.
#[derive(Debug, Clone)]
pub struct FitConfig {
    pub k: i64,
    pub batch_size: i64,
    /// Mini-batch steps.
    pub steps: usize,
    /// Rows used for k-means++ seeding (at least `k`).
    pub init_size: i64,
    pub seed: u64,
}

impl FitConfig {
    pub fn new(k: i64) -> Self {
        Self {
            k,
            batch_size: 1024,
            steps: 100,
            init_size: 3 * k,
            seed: 0,
        }
    }
}

/// Squared distances `[N, M]` between rows of `a` and `b`.
fn sq_dists(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let an = a
        .f_pow_tensor_scalar(2)?
        .f_sum_dim_intlist([1i64].as_slice(), true, a.kind())?;
    let bn = b
        .f_pow_tensor_scalar(2)?
        .f_sum_dim_intlist([1i64].as_slice(), false, b.kind())?;
    Ok((an + bn.f_unsqueeze(0)? - a.f_matmul(&b.f_tr()?)? * 2.0).f_clamp_min(0.0)?)
}

/// Samples an index with probability proportional to `weights` (uniform when all are zero).
fn sample_weighted(rng: &mut ChaCha8Rng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 || !total.is_finite() {
        return rng.random_range(0..weights.len());
    }
    let mut r = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        r -= w;
        if r < 0.0 {
            return i;
        }
    }
    weights.len() - 1
}

/// k-means++ seeding on the rows of `x` (`[N, D]`, N >= k).
fn kmeans_pp(x: &Tensor, k: i64, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    let n = x.size()[0] as usize;
    let first = rng.random_range(0..n) as i64;
    let mut chosen = vec![first];
    let mut d2 = sq_dists(x, &x.f_narrow(0, first, 1)?)?.f_squeeze_dim(1)?;
    while (chosen.len() as i64) < k {
        let w: Vec<f64> = Vec::try_from(&d2.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?)?;
        let i = sample_weighted(rng, &w) as i64;
        chosen.push(i);
        let di = sq_dists(x, &x.f_narrow(0, i, 1)?)?.f_squeeze_dim(1)?;
        d2 = d2.f_minimum(&di)?;
    }
    let idx = Tensor::from_slice(&chosen).f_to_device(x.device())?;
    Ok(x.f_index_select(0, &idx)?)
}

/// Fits `cfg.k` centroids to the rows of `data` (`[N, D]`, N >= k) with seeded mini-batch k-means.
pub fn fit_minibatch(data: &Tensor, cfg: &FitConfig) -> Result<KMeans> {
    let _span = tracing::info_span!("kmeans_fit", k = cfg.k).entered();
    if data.dim() != 2 {
        return Err(ModelError::InvalidArgument(format!(
            "k-means data must be [N, D], got shape {:?}",
            data.size()
        )));
    }
    let n = data.size()[0];
    if cfg.k < 1 || n < cfg.k {
        return Err(ModelError::InvalidArgument(format!(
            "cannot fit {} clusters to {n} vectors",
            cfg.k
        )));
    }
    if cfg.batch_size < 1 {
        return Err(ModelError::InvalidArgument(
            "batch_size must be >= 1".into(),
        ));
    }
    let x = data.f_to_kind(Kind::Float)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let init_n = cfg.init_size.clamp(cfg.k, n);
    let init_idx: Vec<i64> = rand::seq::index::sample(&mut rng, n as usize, init_n as usize)
        .into_iter()
        .map(|i| i as i64)
        .collect();
    let init = x.f_index_select(0, &Tensor::from_slice(&init_idx).f_to_device(x.device())?)?;
    let mut centers = kmeans_pp(&init, cfg.k, &mut rng)?;
    let mut counts = Tensor::f_zeros([cfg.k], (Kind::Float, x.device()))?;
    for _ in 0..cfg.steps {
        let b = cfg.batch_size.min(n);
        let idx: Vec<i64> = (0..b).map(|_| rng.random_range(0..n)).collect();
        let xb = x.f_index_select(0, &Tensor::from_slice(&idx).f_to_device(x.device())?)?;
        let km = KMeans::new(centers.shallow_clone())?;
        let a = km.assign(&xb)?;
        let ones = Tensor::f_ones([b], (Kind::Float, x.device()))?;
        let batch_counts =
            Tensor::f_zeros([cfg.k], (Kind::Float, x.device()))?.f_index_add(0, &a, &ones)?;
        let batch_sums = Tensor::f_zeros_like(&centers)?.f_index_add(0, &a, &xb)?;
        counts += &batch_counts;
        // Per-center learning rate 1 / count: c += (sum_b - n_b c) / count.
        let denom = counts.f_clamp_min(1.0)?.f_unsqueeze(1)?;
        let delta = (batch_sums - &centers * batch_counts.f_unsqueeze(1)?) / denom;
        centers += delta;
    }
    KMeans::new(centers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_keeps_run_lengths() {
        let d = dedup(&[3, 3, 3, 5, 5, 3, 7]);
        assert_eq!(d.units, vec![3, 5, 3, 7]);
        assert_eq!(d.durations, vec![3, 2, 1, 1]);
        assert_eq!(dedup(&[]), Deduped::default());
    }

    #[test]
    fn assign_matches_brute_force() {
        tch::manual_seed(3);
        let c = Tensor::randn([37, 5], (Kind::Float, Device::Cpu));
        let x = Tensor::randn([5000, 5], (Kind::Float, Device::Cpu));
        let km = KMeans::new(c.shallow_clone()).unwrap();
        let a = km.assign_vec(&x).unwrap();
        let brute: Vec<i64> = Vec::try_from(
            &(x.unsqueeze(1) - c.unsqueeze(0))
                .pow_tensor_scalar(2)
                .sum_dim_intlist([2i64].as_slice(), false, Kind::Float)
                .argmin(1, false),
        )
        .unwrap();
        let brute: Vec<super::super::UnitId> = brute.into_iter().map(|u| u as u32).collect();
        assert_eq!(a, brute);
        assert_eq!(
            km.assign_vec(&Tensor::zeros([0, 5], (Kind::Float, Device::Cpu)))
                .unwrap(),
            Vec::<u32>::new()
        );
        let e = km
            .assign(&Tensor::zeros([2, 6], (Kind::Float, Device::Cpu)))
            .unwrap_err();
        assert!(e.to_string().contains("dimension 5"), "{e}");
    }

    #[test]
    fn fit_recovers_separated_clusters() {
        tch::manual_seed(0);
        let k = 8;
        let means = Tensor::randn([k, 16], (Kind::Float, Device::Cpu)) * 10.0;
        let labels = Tensor::randint(k, [4000], (Kind::Int64, Device::Cpu));
        let data = means.index_select(0, &labels)
            + Tensor::randn([4000, 16], (Kind::Float, Device::Cpu)) * 0.3;
        let mut cfg = FitConfig::new(k);
        cfg.batch_size = 256;
        cfg.steps = 50;
        cfg.seed = 42;
        let km = fit_minibatch(&data, &cfg).unwrap();
        // Every fitted centroid sits near one true mean, and no two share one.
        let d = sq_dists(km.centroids(), &means).unwrap();
        let nearest: Vec<i64> = Vec::try_from(&d.argmin(1, false)).unwrap();
        let mut sorted = nearest.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), k as usize, "{nearest:?}");
        let worst = d.min_dim(1, false).0.max().double_value(&[]);
        assert!(worst < 0.1, "worst centroid error {worst}");
        // Seeded: the same seed gives the same centroids.
        let again = fit_minibatch(&data, &cfg).unwrap();
        assert_eq!(
            (km.centroids() - again.centroids())
                .abs()
                .max()
                .double_value(&[]),
            0.0
        );
        assert!(fit_minibatch(&data.narrow(0, 0, 4), &cfg).is_err());
    }
}
