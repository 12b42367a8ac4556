//! HiFi-GAN discriminators for training a unit vocoder: the multi-period discriminator (MPD,
//! periods 2, 3, 5, 7, 11, Conv2d stacks over the waveform folded by period) and the multi-scale
//! discriminator (MSD, three Conv1d stacks on the waveform and its 2x and 4x average-pooled
//! versions; the first with spectral norm, the others with weight norm).
//!
//! Trainable parameters live in a `tch::nn::VarStore` under HiFi-GAN's checkpoint names
//! (`mpd.discriminators.{i}.convs.{j}.{weight_g,weight_v,bias}`, `msd.discriminators.0.convs.{j}.
//! {weight_orig,weight_u,weight_v,bias}` for spectral norm), so `do_XXXXXXXX` checkpoints of
//! jik876/hifi-gan map one to one.
//!
//! Reference: jik876/hifi-gan `models.py` (DiscriminatorP, DiscriminatorS, MultiPeriod-,
//! MultiScaleDiscriminator); speechbrain `lobes/models/HifiGAN.py` implements the same.

use crate::Result;
use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

const LRELU_SLOPE: f64 = 0.1;

/// A convolution weight under weight norm (`w = g v / |v|`, norm over all dims but 0) or
/// spectral norm (`w = w_orig / sigma`, sigma by power iteration with buffers u, v).
#[derive(Debug)]
enum NormWeight {
    Weight { g: Tensor, v: Tensor },
    Spectral { orig: Tensor, u: Tensor, v: Tensor },
}

impl NormWeight {
    fn new(p: &Path, shape: &[i64], spectral: bool) -> Self {
        let fan_in: i64 = shape[1..].iter().product();
        let bound = 1.0 / (fan_in as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        if spectral {
            let orig = p.var("weight_orig", shape, init);
            let rows = shape[0];
            // Power-iteration buffers (not trained), random unit vectors as torch starts them.
            let mut u = p.zeros_no_train("weight_u", &[rows]);
            let mut v = p.zeros_no_train("weight_v", &[fan_in]);
            let _g = tch::no_grad_guard();
            u.copy_(&normalize(&Tensor::randn(
                [rows],
                (Kind::Float, u.device()),
            )));
            v.copy_(&normalize(&Tensor::randn(
                [fan_in],
                (Kind::Float, v.device()),
            )));
            let w = Self::Spectral { orig, u, v };
            // A few power iterations so that sigma is meaningful before the first training step
            // (torch starts from random u, v; a loaded checkpoint overwrites both anyway).
            for _ in 0..5 {
                let _ = w.weight(true);
            }
            w
        } else {
            let v = p.var("weight_v", shape, init);
            let norm = {
                let _g = tch::no_grad_guard();
                v.flatten(1, -1).norm_scalaropt_dim(2, [1], false)
            };
            let mut gshape = vec![shape[0]];
            gshape.extend(std::iter::repeat_n(1, shape.len() - 1));
            let g = p.var_copy("weight_g", &norm.view(gshape.as_slice()));
            Self::Weight { g, v }
        }
    }

    /// The effective weight; in training mode spectral norm first runs one power iteration
    /// (updating u and v), as torch.nn.utils.spectral_norm does.
    fn weight(&self, train: bool) -> Result<Tensor> {
        match self {
            NormWeight::Weight { g, v } => {
                let dims: Vec<i64> = (1..v.dim() as i64).collect();
                let n = v.f_norm_scalaropt_dim(2, dims.as_slice(), true)?;
                Ok(v.f_mul(&g.f_div(&n)?)?)
            }
            NormWeight::Spectral { orig, u, v } => {
                let mat = orig.f_flatten(1, -1)?;
                if train {
                    let _g = tch::no_grad_guard();
                    let m = mat.detach();
                    let nv = normalize(&m.f_tr()?.f_mv(u)?);
                    let nu = normalize(&m.f_mv(&nv)?);
                    v.shallow_clone().f_copy_(&nv)?;
                    u.shallow_clone().f_copy_(&nu)?;
                }
                // Copies, as torch does: a later iteration updates u, v in place, which must
                // not disturb the graph of this forward.
                let (u, v) = (u.f_detach_copy()?, v.f_detach_copy()?);
                let sigma = u.f_dot(&mat.f_mv(&v)?)?;
                Ok(orig.f_div(&sigma)?)
            }
        }
    }
}

fn normalize(x: &Tensor) -> Tensor {
    // torch.nn.functional.normalize with eps 1e-12.
    x / x.norm().clamp_min(1e-12)
}

#[derive(Debug)]
struct NormConv {
    weight: NormWeight,
    bias: Tensor,
    stride: i64,
    padding: i64,
    groups: i64,
    /// Conv2d with (k, 1) kernels (MPD) instead of Conv1d.
    two_d: bool,
}

impl NormConv {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: &Path,
        cin: i64,
        cout: i64,
        k: i64,
        stride: i64,
        padding: i64,
        groups: i64,
        spectral: bool,
        two_d: bool,
    ) -> Self {
        let shape: Vec<i64> = if two_d {
            vec![cout, cin / groups, k, 1]
        } else {
            vec![cout, cin / groups, k]
        };
        let weight = NormWeight::new(p, &shape, spectral);
        let fan_in: i64 = shape[1..].iter().product();
        let bound = 1.0 / (fan_in as f64).sqrt();
        let bias = p.var(
            "bias",
            &[cout],
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        Self {
            weight,
            bias,
            stride,
            padding,
            groups,
            two_d,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let w = self.weight.weight(train)?;
        Ok(if self.two_d {
            x.f_conv2d(
                &w,
                Some(&self.bias),
                [self.stride, 1],
                [self.padding, 0],
                [1, 1],
                self.groups,
            )?
        } else {
            x.f_conv1d(
                &w,
                Some(&self.bias),
                [self.stride],
                [self.padding],
                [1],
                self.groups,
            )?
        })
    }
}

/// Scores (batch, n) of each sub-discriminator and their feature maps (for feature matching).
#[derive(Debug)]
pub struct DiscriminatorOutput {
    pub scores: Vec<Tensor>,
    pub features: Vec<Vec<Tensor>>,
}

fn run_stack(
    convs: &[NormConv],
    post: &NormConv,
    x: Tensor,
    train: bool,
) -> Result<(Tensor, Vec<Tensor>)> {
    let mut x = x;
    let mut feats = Vec::with_capacity(convs.len() + 1);
    for c in convs {
        let y = c.forward(&x, train)?;
        x = y.f_maximum(&y.f_mul_scalar(LRELU_SLOPE)?)?;
        feats.push(x.shallow_clone());
    }
    let x = post.forward(&x, train)?;
    feats.push(x.shallow_clone());
    Ok((x.f_flatten(1, -1)?, feats))
}

/// One period discriminator: the waveform reflect-padded to a multiple of `period`, folded to
/// (batch, 1, time / period, period), five Conv2d (kernel (5, 1), stride (3, 1)), conv_post.
#[derive(Debug)]
pub struct DiscriminatorP {
    period: i64,
    convs: Vec<NormConv>,
    conv_post: NormConv,
}

impl DiscriminatorP {
    pub fn new(p: &Path, period: i64) -> Self {
        Self::with_divisor(p, period, 1)
    }

    /// As [`Self::new`] with every hidden channel count divided by `div` (1, 2, 4 or 8).
    pub fn with_divisor(p: &Path, period: i64, div: i64) -> Self {
        let c = |n: i64| n / div;
        let chans = [1, c(32), c(128), c(512), c(1024), c(1024)];
        let convs = (0..5)
            .map(|j| {
                let stride = if j < 4 { 3 } else { 1 };
                NormConv::new(
                    &(p / "convs" / j),
                    chans[j],
                    chans[j + 1],
                    5,
                    stride,
                    2,
                    1,
                    false,
                    true,
                )
            })
            .collect();
        let conv_post = NormConv::new(&(p / "conv_post"), c(1024), 1, 3, 1, 1, 1, false, true);
        Self {
            period,
            convs,
            conv_post,
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<(Tensor, Vec<Tensor>)> {
        let s = x.size();
        let (b, c, mut t) = (s[0], s[1], s[2]);
        let mut x = x.shallow_clone();
        if t % self.period != 0 {
            let pad = self.period - t % self.period;
            x = x.f_pad([0, pad], "reflect", None)?;
            t += pad;
        }
        let x = x.f_view([b, c, t / self.period, self.period])?;
        run_stack(&self.convs, &self.conv_post, x, train)
    }
}

/// One scale discriminator: seven Conv1d (grouped, strided), conv_post.
#[derive(Debug)]
pub struct DiscriminatorS {
    convs: Vec<NormConv>,
    conv_post: NormConv,
}

impl DiscriminatorS {
    pub fn new(p: &Path, spectral: bool) -> Self {
        Self::with_divisor(p, spectral, 1)
    }

    /// As [`Self::new`] with every hidden channel count divided by `div` (1, 2, 4 or 8; the
    /// groups stay HiFi-GAN's).
    pub fn with_divisor(p: &Path, spectral: bool, div: i64) -> Self {
        let c = |n: i64| n / div;
        // (in, out, kernel, stride, groups, padding)
        let layers = [
            (1, c(128), 15, 1, 1, 7),
            (c(128), c(128), 41, 2, 4, 20),
            (c(128), c(256), 41, 2, 16, 20),
            (c(256), c(512), 41, 4, 16, 20),
            (c(512), c(1024), 41, 4, 16, 20),
            (c(1024), c(1024), 41, 1, 16, 20),
            (c(1024), c(1024), 5, 1, 1, 2),
        ];
        let convs = layers
            .iter()
            .enumerate()
            .map(|(j, &(i, o, k, s, g, pad))| {
                NormConv::new(&(p / "convs" / j), i, o, k, s, pad, g, spectral, false)
            })
            .collect();
        let conv_post = NormConv::new(&(p / "conv_post"), c(1024), 1, 3, 1, 1, 1, spectral, false);
        Self { convs, conv_post }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<(Tensor, Vec<Tensor>)> {
        run_stack(&self.convs, &self.conv_post, x.shallow_clone(), train)
    }
}

/// MPD: periods 2, 3, 5, 7, 11 (`mpd.discriminators.{i}`).
#[derive(Debug)]
pub struct MultiPeriodDiscriminator {
    pub discriminators: Vec<DiscriminatorP>,
}

impl MultiPeriodDiscriminator {
    pub const PERIODS: [i64; 5] = [2, 3, 5, 7, 11];

    pub fn new(p: &Path) -> Self {
        Self::with_divisor(p, 1)
    }

    pub fn with_divisor(p: &Path, div: i64) -> Self {
        let d = p / "discriminators";
        Self {
            discriminators: Self::PERIODS
                .iter()
                .enumerate()
                .map(|(i, &period)| DiscriminatorP::with_divisor(&(&d / i), period, div))
                .collect(),
        }
    }

    /// `x`: waveforms (batch, 1, time).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<DiscriminatorOutput> {
        let mut out = DiscriminatorOutput {
            scores: vec![],
            features: vec![],
        };
        for d in &self.discriminators {
            let (s, f) = d.forward(x, train)?;
            out.scores.push(s);
            out.features.push(f);
        }
        Ok(out)
    }
}

/// MSD: the waveform, then average-pooled (kernel 4, stride 2, padding 2) once and twice
/// (`msd.discriminators.{0,1,2}`, the first with spectral norm).
#[derive(Debug)]
pub struct MultiScaleDiscriminator {
    pub discriminators: Vec<DiscriminatorS>,
}

impl MultiScaleDiscriminator {
    pub fn new(p: &Path) -> Self {
        Self::with_divisor(p, 1)
    }

    pub fn with_divisor(p: &Path, div: i64) -> Self {
        let d = p / "discriminators";
        Self {
            discriminators: (0..3)
                .map(|i| DiscriminatorS::with_divisor(&(&d / i), i == 0, div))
                .collect(),
        }
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<DiscriminatorOutput> {
        let mut out = DiscriminatorOutput {
            scores: vec![],
            features: vec![],
        };
        let mut x = x.shallow_clone();
        for (i, d) in self.discriminators.iter().enumerate() {
            if i > 0 {
                // AvgPool1d(4, 2, padding=2), count_include_pad as torch's default.
                x = x.f_avg_pool1d([4], [2], [2], false, true)?;
            }
            let (s, f) = d.forward(&x, train)?;
            out.scores.push(s);
            out.features.push(f);
        }
        Ok(out)
    }
}

/// Both discriminators, as HiFi-GAN trains them (`mpd.*`, `msd.*`).
#[derive(Debug)]
pub struct HifiGanDiscriminator {
    pub mpd: MultiPeriodDiscriminator,
    pub msd: MultiScaleDiscriminator,
}

impl HifiGanDiscriminator {
    pub fn new(p: &Path) -> Self {
        Self {
            mpd: MultiPeriodDiscriminator::new(&(p / "mpd")),
            msd: MultiScaleDiscriminator::new(&(p / "msd")),
        }
    }

    /// Narrower discriminators for CPU training: every hidden channel count of MPD and MSD
    /// divided by `div` (1 is HiFi-GAN's; 2, 4 or 8 keep the MSD groups valid; others are an
    /// error).
    pub fn with_divisor(p: &Path, div: i64) -> Result<Self> {
        if ![1, 2, 4, 8].contains(&div) {
            return Err(crate::ModelError::InvalidArgument(format!(
                "discriminator channel divisor {div}: expected 1, 2, 4 or 8"
            )));
        }
        Ok(Self {
            mpd: MultiPeriodDiscriminator::with_divisor(&(p / "mpd"), div),
            msd: MultiScaleDiscriminator::with_divisor(&(p / "msd"), div),
        })
    }

    /// Scores and features of MPD then MSD (8 sub-discriminators).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<DiscriminatorOutput> {
        let mut a = self.mpd.forward(x, train)?;
        let b = self.msd.forward(x, train)?;
        a.scores.extend(b.scores);
        a.features.extend(b.features);
        Ok(a)
    }
}

/// Number of trainable parameters of a var store (spectral-norm buffers excluded).
pub fn trainable_parameters(vs: &tch::nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum::<i64>()
}
