//! Key/value cache owned by the caller: allocated once per session up to a maximum length and
//! written in place (never grown by concatenation), as candle-nn's `kv_cache.rs` does.

use super::config::LlamaConfig;
use crate::{ModelError, Result};
use tch::{Device, Kind, Tensor};

#[derive(Debug)]
pub struct KvCache {
    /// Per layer: keys and values `[batch, kv_heads, capacity, head_dim]`.
    layers: Vec<(Tensor, Tensor)>,
    len: i64,
    capacity: i64,
    batch: i64,
}

impl KvCache {
    pub fn new(
        cfg: &LlamaConfig,
        batch: i64,
        capacity: i64,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let shape = [batch, cfg.num_key_value_heads, capacity, cfg.head_dim];
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| {
                Ok((
                    Tensor::f_zeros(shape, (kind, device))?,
                    Tensor::f_zeros(shape, (kind, device))?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            len: 0,
            capacity,
            batch,
        })
    }

    /// Positions filled so far.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    pub fn batch(&self) -> i64 {
        self.batch
    }

    /// Forgets the contents; the memory is kept for the next sequence.
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Rewinds to `len` positions (for example to reuse a shared prompt prefix).
    pub fn truncate(&mut self, len: i64) {
        self.len = self.len.min(len.max(0));
    }

    /// Fails when `extra` more positions do not fit.
    pub(crate) fn check_room(&self, extra: i64) -> Result<()> {
        if self.len + extra > self.capacity {
            return Err(ModelError::CacheFull {
                needed: (self.len + extra) as usize,
                capacity: self.capacity as usize,
            });
        }
        Ok(())
    }

    /// Writes `k`, `v` `[batch, kv_heads, T, head_dim]` of `layer` at the current position and
    /// returns views of all keys and values so far. The position advances in [`Self::advance`].
    pub(crate) fn write(&self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.size()[2];
        let (kc, vc) = &self.layers[layer];
        kc.f_narrow(2, self.len, t)?.f_copy_(k)?;
        vc.f_narrow(2, self.len, t)?.f_copy_(v)?;
        Ok((
            kc.f_narrow(2, 0, self.len + t)?,
            vc.f_narrow(2, 0, self.len + t)?,
        ))
    }

    /// Fills every row of this cache with the single row of `src` (same model, batch 1): a
    /// prompt prefilled once serves several sampled continuations.
    pub fn fill_rows_from(&mut self, src: &KvCache) -> Result<()> {
        if src.batch != 1 || src.layers.len() != self.layers.len() || src.len > self.capacity {
            return Err(ModelError::InvalidArgument(format!(
                "cannot copy a cache of batch {} and {} positions into one of capacity {}",
                src.batch, src.len, self.capacity
            )));
        }
        for ((dk, dv), (sk, sv)) in self.layers.iter().zip(&src.layers) {
            for (d, s) in [(dk, sk), (dv, sv)] {
                d.f_narrow(2, 0, src.len)?
                    .f_copy_(&s.f_narrow(2, 0, src.len)?)?;
            }
        }
        self.len = src.len;
        Ok(())
    }

    /// Keys and values of `layer`, `[batch, kv_heads, capacity, head_dim]` (the first
    /// [`Self::len`] positions are filled).
    pub fn layer(&self, layer: usize) -> Option<(&Tensor, &Tensor)> {
        self.layers.get(layer).map(|(k, v)| (k, v))
    }

    pub(crate) fn advance(&mut self, t: i64) {
        self.len += t;
    }
}
