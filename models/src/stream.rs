//! The streaming contract every chunked stage of Tolk follows, and the one check that a stage
//! keeps it.
//!
//! A stage takes its input in chunks of any size (including empty ones) and returns, from each
//! [`Streaming::push`], the output that the input so far makes final; an empty output means
//! "nothing yet", never an error. [`Streaming::finish`] ends the stream and returns everything
//! still held back (look-ahead, a partial window, padding); afterwards the stage takes a new
//! stream. [`Streaming::reset`] drops the current stream. Cumulative figures a stage reports
//! (counters, a conditioning report) stay readable until `reset`.
//!
//! The property that makes a stage streaming: the outputs of `push` over any chunking, followed
//! by `finish`, concatenate to the stage's offline result over the whole input.
//! [`testing::assert_chunked_eq_offline`] checks exactly that at many chunk sizes.
//!
//! Implementors: audio conditioning, resampling, Kaldi features, VAD + endpointing, unit
//! extraction (feature windows and units), the unit vocoder, and the runtime's front end.

use tch::Tensor;

/// A stage that turns a stream of `Input` into a stream of `Output`, chunk by chunk.
pub trait Streaming {
    /// One chunk of input (a slice type: `[f32]` samples, `[UnitId]` units).
    type Input: ?Sized;
    /// What a push returns; [`Chunk::is_empty`] output means "nothing yet".
    type Output: Chunk;
    type Error;

    /// Feeds a chunk (any length) and returns the output it made final.
    fn push(&mut self, input: &Self::Input) -> Result<Self::Output, Self::Error>;

    /// Ends the stream: returns what is still held back. The stage then takes a new stream.
    fn finish(&mut self) -> Result<Self::Output, Self::Error>;

    /// Drops the current stream's buffered input and state.
    fn reset(&mut self);
}

/// A boxed stage (e.g. `Box<dyn FrameStream>`, chosen by the featurizer) streams as its contents.
impl<S: Streaming + ?Sized> Streaming for Box<S> {
    type Input = S::Input;
    type Output = S::Output;
    type Error = S::Error;

    fn push(&mut self, input: &Self::Input) -> Result<Self::Output, Self::Error> {
        (**self).push(input)
    }

    fn finish(&mut self) -> Result<Self::Output, Self::Error> {
        (**self).finish()
    }

    fn reset(&mut self) {
        (**self).reset()
    }
}

/// Output of a streaming stage: possibly empty, and concatenable in stream order.
pub trait Chunk: Sized {
    fn is_empty(&self) -> bool;
    /// Appends `next` (later in the stream) to `self`.
    fn append(&mut self, next: Self);
}

impl<T> Chunk for Vec<T> {
    fn is_empty(&self) -> bool {
        Vec::is_empty(self)
    }
    fn append(&mut self, next: Self) {
        self.extend(next);
    }
}

/// Frames along dimension 0 (`[n, D]` features, `[n]` samples); zero rows is "nothing yet".
impl Chunk for Tensor {
    fn is_empty(&self) -> bool {
        !self.defined() || self.numel() == 0
    }
    fn append(&mut self, next: Self) {
        if Chunk::is_empty(&next) {
            return;
        }
        if Chunk::is_empty(self) {
            *self = next;
        } else {
            *self = Tensor::cat(&[&*self, &next], 0);
        }
    }
}

/// Pushes `input` in chunks of `chunk` items (the last one shorter), then finishes; returns the
/// concatenated output.
pub fn run_chunked<S, T>(stage: &mut S, input: &[T], chunk: usize) -> Result<S::Output, S::Error>
where
    S: Streaming<Input = [T]> + ?Sized,
{
    let mut chunks = input.chunks(chunk.max(1));
    let mut out = match chunks.next() {
        Some(c) => stage.push(c)?,
        None => return stage.finish(),
    };
    for c in chunks {
        out.append(stage.push(c)?);
    }
    out.append(stage.finish()?);
    Ok(out)
}

/// Pushes `input` whole, then finishes.
pub fn run_whole<S, T>(stage: &mut S, input: &[T]) -> Result<S::Output, S::Error>
where
    S: Streaming<Input = [T]> + ?Sized,
{
    let mut out = stage.push(input)?;
    out.append(stage.finish()?);
    Ok(out)
}

/// The chunked-equals-offline check, for tests of any [`Streaming`] stage.
pub mod testing {
    use super::{run_chunked, Streaming};
    use std::fmt::Debug;

    /// Chunk sizes that exercise a stage's boundaries: 1, primes, powers of two around common
    /// window sizes, and sizes near `input_len` (whole input in one or two chunks).
    pub fn chunk_sizes(input_len: usize) -> Vec<usize> {
        let mut v = vec![1, 2, 3, 7, 31, 160, 257, 400, 511, 512, 513, 1000, 4096];
        v.extend([input_len / 2 + 1, input_len.max(1)]);
        v.retain(|&c| c >= 1 && (c <= input_len.max(1) || c <= 7));
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Asserts that `stage` gives `offline` on `input` whatever the chunking: for every size in
    /// `sizes`, the input is pushed in chunks of that size into a fresh stage from `make` and
    /// into the reused stage after `reset`, and `check(chunk, &output, offline)` must pass. The
    /// same stage is then used again after `finish` (a second stream) and must agree too.
    pub fn assert_chunked_eq_offline<S, T, F, C>(
        mut make: F,
        input: &[T],
        offline: &S::Output,
        sizes: &[usize],
        mut check: C,
    ) where
        S: Streaming<Input = [T]>,
        S::Error: Debug,
        F: FnMut() -> S,
        C: FnMut(usize, &S::Output, &S::Output),
    {
        assert!(!sizes.is_empty(), "no chunk sizes to test");
        let mut reused = make();
        for &chunk in sizes {
            let mut fresh = make();
            let out = run_chunked(&mut fresh, input, chunk)
                .unwrap_or_else(|e| panic!("chunk {chunk}: {e:?}"));
            check(chunk, &out, offline);
            // After finish the stage takes a new stream.
            let again = run_chunked(&mut fresh, input, chunk)
                .unwrap_or_else(|e| panic!("chunk {chunk}, second stream: {e:?}"));
            check(chunk, &again, offline);
            // Reset in the middle of a stream forgets it.
            let half = &input[..input.len() / 2];
            for c in half.chunks(chunk) {
                reused
                    .push(c)
                    .unwrap_or_else(|e| panic!("chunk {chunk}, before reset: {e:?}"));
            }
            reused.reset();
            let after = run_chunked(&mut reused, input, chunk)
                .unwrap_or_else(|e| panic!("chunk {chunk}, after reset: {e:?}"));
            check(chunk, &after, offline);
        }
    }

    /// [`assert_chunked_eq_offline`] with exact equality.
    pub fn assert_chunked_eq_offline_exact<S, T, F>(
        make: F,
        input: &[T],
        offline: &S::Output,
        sizes: &[usize],
    ) where
        S: Streaming<Input = [T]>,
        S::Error: Debug,
        S::Output: PartialEq + Debug,
        F: FnMut() -> S,
    {
        assert_chunked_eq_offline(make, input, offline, sizes, |chunk, out, want| {
            assert_eq!(out, want, "chunk size {chunk}")
        });
    }

    /// Largest absolute difference of two float tensors of the same shape (panics on a shape
    /// mismatch, naming both shapes).
    pub fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
        assert_eq!(a.size(), b.size(), "shapes differ");
        if a.numel() == 0 {
            return 0.0;
        }
        (a - b).abs().max().double_value(&[])
    }

    /// A tensor check for [`assert_chunked_eq_offline`]: same shape, within `tol`.
    pub fn close(tol: f64) -> impl FnMut(usize, &tch::Tensor, &tch::Tensor) {
        move |chunk, out, want| {
            assert_eq!(out.size(), want.size(), "chunk size {chunk}: shapes differ");
            let d = max_abs_diff(out, want);
            assert!(d <= tol, "chunk size {chunk}: max |diff| {d} > {tol}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    /// A moving sum over 3 items: output i is x[i-1] + x[i] + x[i+1] (zeros outside), one item
    /// of look-ahead held back until the next push or finish.
    #[derive(Default)]
    struct MovingSum {
        prev: Option<i32>,
        cur: Option<i32>,
    }

    impl Streaming for MovingSum {
        type Input = [i32];
        type Output = Vec<i32>;
        type Error = std::convert::Infallible;
        fn push(&mut self, input: &[i32]) -> Result<Vec<i32>, Self::Error> {
            let mut out = Vec::new();
            for &x in input {
                if let Some(c) = self.cur {
                    out.push(self.prev.unwrap_or(0) + c + x);
                }
                self.prev = self.cur;
                self.cur = Some(x);
            }
            Ok(out)
        }
        fn finish(&mut self) -> Result<Vec<i32>, Self::Error> {
            let out = self
                .cur
                .map(|c| vec![self.prev.unwrap_or(0) + c])
                .unwrap_or_default();
            self.reset();
            Ok(out)
        }
        fn reset(&mut self) {
            *self = Self::default();
        }
    }

    fn offline(x: &[i32]) -> Vec<i32> {
        (0..x.len())
            .map(|i| {
                let at = |j: isize| {
                    usize::try_from(j)
                        .ok()
                        .and_then(|j| x.get(j))
                        .copied()
                        .unwrap_or(0)
                };
                at(i as isize - 1) + at(i as isize) + at(i as isize + 1)
            })
            .collect()
    }

    #[test]
    fn helper_accepts_a_streaming_stage() {
        let x: Vec<i32> = (0..50).map(|i| (i * 7 % 11) - 5).collect();
        let want = offline(&x);
        assert_chunked_eq_offline_exact(MovingSum::default, &x, &want, &chunk_sizes(x.len()));
        assert_eq!(run_whole(&mut MovingSum::default(), &x).unwrap(), want);
    }

    /// A stage that forgets its look-ahead at chunk boundaries: the helper must catch it.
    #[derive(Default)]
    struct Leaky(MovingSum);

    impl Streaming for Leaky {
        type Input = [i32];
        type Output = Vec<i32>;
        type Error = std::convert::Infallible;
        fn push(&mut self, input: &[i32]) -> Result<Vec<i32>, Self::Error> {
            let mut out = self.0.push(input)?;
            out.extend(self.0.finish()?);
            Ok(out)
        }
        fn finish(&mut self) -> Result<Vec<i32>, Self::Error> {
            self.0.finish()
        }
        fn reset(&mut self) {
            self.0.reset()
        }
    }

    #[test]
    fn helper_rejects_a_stage_that_is_not_streaming() {
        let x: Vec<i32> = (1..40).collect();
        let want = offline(&x);
        let r = std::panic::catch_unwind(|| {
            assert_chunked_eq_offline_exact(Leaky::default, &x, &want, &[7])
        });
        assert!(
            r.is_err(),
            "a stage that drops its state between chunks passed"
        );
        // Whole input in one chunk is still right, so the check is about chunking.
        assert_eq!(run_whole(&mut Leaky::default(), &x).unwrap(), want);
    }

    #[test]
    fn tensor_chunks_concatenate_along_frames() {
        let mut a = Tensor::zeros([0, 3], (tch::Kind::Float, tch::Device::Cpu));
        assert!(Chunk::is_empty(&a));
        a.append(Tensor::ones([2, 3], (tch::Kind::Float, tch::Device::Cpu)));
        a.append(Tensor::zeros([0, 3], (tch::Kind::Float, tch::Device::Cpu)));
        a.append(Tensor::ones([1, 3], (tch::Kind::Float, tch::Device::Cpu)));
        assert_eq!(a.size(), vec![3, 3]);
        assert!(Chunk::is_empty(&Tensor::new()));
    }

    #[test]
    fn chunk_sizes_cover_small_and_whole() {
        let s = chunk_sizes(1000);
        assert!(s.contains(&1) && s.contains(&1000) && s.contains(&501));
        assert!(s.iter().all(|&c| c <= 1000));
        assert_eq!(chunk_sizes(0), vec![1, 2, 3, 7]);
    }
}
