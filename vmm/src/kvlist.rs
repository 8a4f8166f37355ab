//! `key=value,key=value` option lists, as QEMU-style command lines use them.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KvError {
    #[error("{option}: '{item}' is not key=value; write e.g. {example}")]
    NotKeyValue {
        option: String,
        item: String,
        example: String,
    },
    #[error("{option}: unknown key '{key}'; known keys: {known}")]
    UnknownKey {
        option: String,
        key: String,
        known: String,
    },
    #[error("{option}: key '{key}' given twice")]
    Duplicate { option: String, key: String },
    #[error("{option}: {key}={value} is not valid: {reason}")]
    BadValue {
        option: String,
        key: String,
        value: String,
        reason: String,
    },
    #[error("{option}: missing {key}=; {hint}")]
    Missing {
        option: String,
        key: String,
        hint: String,
    },
}

/// A parsed option list; keys are checked against the option's known set.
pub struct KvList {
    option: String,
    items: Vec<(String, String)>,
}

impl KvList {
    pub fn parse(option: &str, text: &str, known: &[&str], example: &str) -> Result<Self, KvError> {
        let mut items: Vec<(String, String)> = Vec::new();
        for item in text.split(',').filter(|s| !s.is_empty()) {
            let Some((k, v)) = item.split_once('=') else {
                return Err(KvError::NotKeyValue {
                    option: option.into(),
                    item: item.into(),
                    example: example.into(),
                });
            };
            let k = k.trim();
            if !known.contains(&k) {
                return Err(KvError::UnknownKey {
                    option: option.into(),
                    key: k.into(),
                    known: known.join(", "),
                });
            }
            if items.iter().any(|(x, _)| x == k) {
                return Err(KvError::Duplicate {
                    option: option.into(),
                    key: k.into(),
                });
            }
            items.push((k.to_string(), v.to_string()));
        }
        Ok(KvList {
            option: option.into(),
            items,
        })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.items
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn require(&self, key: &str, hint: &str) -> Result<&str, KvError> {
        self.get(key).ok_or_else(|| KvError::Missing {
            option: self.option.clone(),
            key: key.into(),
            hint: hint.into(),
        })
    }

    pub fn bad(&self, key: &str, value: &str, reason: impl Into<String>) -> KvError {
        KvError::BadValue {
            option: self.option.clone(),
            key: key.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// `on|off` (also `true|false`, `yes|no`, `1|0`), or `default` when absent.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool, KvError> {
        match self.get(key) {
            None => Ok(default),
            Some("on" | "true" | "yes" | "1") => Ok(true),
            Some("off" | "false" | "no" | "0") => Ok(false),
            Some(v) => Err(self.bad(key, v, "use on or off")),
        }
    }

    pub fn size(&self, key: &str) -> Result<Option<u64>, KvError> {
        self.get(key)
            .map(|v| devices::size::parse_size(v).map_err(|e| self.bad(key, v, e.to_string())))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let l = KvList::parse("--x", "a=1,b=on", &["a", "b", "c"], "a=1").unwrap();
        assert_eq!(l.get("a"), Some("1"));
        assert!(l.flag("b", false).unwrap());
        assert!(!l.flag("c", false).unwrap());
        assert_eq!(
            KvList::parse("--x", "d=1", &["a"], "a=1")
                .err()
                .unwrap()
                .to_string(),
            "--x: unknown key 'd'; known keys: a"
        );
        assert!(matches!(
            KvList::parse("--x", "a=1,a=2", &["a"], "a=1"),
            Err(KvError::Duplicate { .. })
        ));
        assert!(matches!(
            KvList::parse("--x", "a", &["a"], "a=1"),
            Err(KvError::NotKeyValue { .. })
        ));
        let l = KvList::parse("--x", "a=maybe", &["a"], "a=1").unwrap();
        assert!(l
            .flag("a", false)
            .unwrap_err()
            .to_string()
            .contains("use on or off"));
    }
}
