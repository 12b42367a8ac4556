//! The layers of the unit HiFi-GAN generator and its duration predictor: "same" and transposed
//! 1-D convolutions, the leaky ReLU and the HiFi-GAN residual blocks (fairseq
//! `fairseq/models/text_to_speech/hifigan.py`: ResBlock1/2), shared by the offline generator,
//! the streaming states and the duration predictor.

use crate::Result;
use tch::Tensor;

/// Leaky ReLU slope inside the generator; the last one (before conv_post) uses 0.01.
pub(crate) const LRELU_SLOPE: f64 = 0.1;
pub(crate) const LRELU_SLOPE_POST: f64 = 0.01;

/// `leaky_relu(x, slope)` for 0 < slope < 1, as `max(x, slope * x)` (the same values).
pub(crate) fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    Ok(x.f_maximum(&x.f_mul_scalar(slope)?)?)
}

/// A stride-1 convolution padded to keep the length ("same", zero padding as in fairseq).
#[derive(Debug)]
pub(crate) struct Conv1d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub dilation: i64,
    pub padding: i64,
}

impl Conv1d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, dilation: i64, padding: i64) -> Self {
        Self {
            weight,
            bias,
            dilation,
            padding,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_conv1d(
            &self.weight,
            self.bias.as_ref(),
            [1],
            [self.padding],
            [self.dilation],
            1,
        )?)
    }

    /// Input samples one output depends on, minus one: dilation * (kernel - 1).
    pub fn span(&self) -> i64 {
        self.dilation * (self.weight.size()[2] - 1)
    }

    /// Samples after the current one that an output needs.
    pub fn right_context(&self) -> i64 {
        self.span() - self.padding
    }
}

/// `ConvTranspose1d(k, stride u, padding (k - u) / 2)`: weight (in, out, k); the output has
/// exactly `u` samples per input frame.
#[derive(Debug)]
pub(crate) struct ConvTranspose1d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub stride: i64,
    pub padding: i64,
}

impl ConvTranspose1d {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_conv_transpose1d(
            &self.weight,
            Some(&self.bias),
            [self.stride],
            [self.padding],
            [0],
            1,
            [1],
        )?)
    }

    pub fn kernel(&self) -> i64 {
        self.weight.size()[2]
    }
}

/// HiFi-GAN residual blocks. One: `x += c2(lrelu(c1(lrelu(x))))` for three (dilated c1, c2)
/// pairs. Two: `x += c(lrelu(x))` for two dilated convs.
#[derive(Debug)]
pub(crate) enum ResBlock {
    One {
        convs1: Vec<Conv1d>,
        convs2: Vec<Conv1d>,
    },
    Two {
        convs: Vec<Conv1d>,
    },
}

impl ResBlock {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.shallow_clone();
        match self {
            ResBlock::One { convs1, convs2 } => {
                for (c1, c2) in convs1.iter().zip(convs2) {
                    let t = c1.forward(&leaky_relu(&x, LRELU_SLOPE)?)?;
                    let t = c2.forward(&leaky_relu(&t, LRELU_SLOPE)?)?;
                    x = t.f_add(&x)?;
                }
            }
            ResBlock::Two { convs } => {
                for c in convs {
                    x = c.forward(&leaky_relu(&x, LRELU_SLOPE)?)?.f_add(&x)?;
                }
            }
        }
        Ok(x)
    }
}
