//! `--shard i/n`: which entries of the selected list one run processes.

/// `i/n`: entries `i, i + n, i + 2n, ...` of the selected list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Why a `--shard` value is not `i/n`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("shard `{0}` is not i/n (for example 0/4)")]
    NotIOverN(String),
    #[error("shard `{shard}`: `{part}` is not a number")]
    NotANumber { shard: String, part: String },
    #[error("shard `{0}`: need 0 <= i < n")]
    OutOfRange(String),
}

impl std::str::FromStr for Shard {
    type Err = ShardError;
    fn from_str(s: &str) -> Result<Self, ShardError> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| ShardError::NotIOverN(s.to_string()))?;
        let number = |part: &str| {
            part.trim()
                .parse::<usize>()
                .map_err(|_| ShardError::NotANumber {
                    shard: s.to_string(),
                    part: part.to_string(),
                })
        };
        let (index, count) = (number(i)?, number(n)?);
        if count == 0 || index >= count {
            return Err(ShardError::OutOfRange(s.to_string()));
        }
        Ok(Self { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_print() {
        let s: Shard = "1/4".parse().unwrap();
        assert_eq!((s.index, s.count), (1, 4));
        assert_eq!(s.to_string(), "1/4");
        for bad in ["4/4", "1", "a/2", "0/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
