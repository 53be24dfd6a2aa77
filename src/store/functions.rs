//! Every function of the library the service calls, gathered for the test that checks each
//! Lua header (KEYS / ARGV counts, Returns, Refusals) against its Rust declaration.

use super::fcall::Function;

/// Every function the service calls.
pub fn all() -> Vec<&'static Function> {
    let mut v = Vec::new();
    v.extend_from_slice(super::kv::FUNCTIONS);
    v.extend_from_slice(super::queue::FUNCTIONS);
    v.extend_from_slice(super::locks::FUNCTIONS);
    v.extend_from_slice(super::agents::FUNCTIONS);
    v.extend_from_slice(super::partitions::FUNCTIONS);
    v.extend_from_slice(super::backup::FUNCTIONS);
    v.extend_from_slice(super::queue_backup::FUNCTIONS);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fcall::Arity;
    use crate::store::migrate;

    /// `-- KEYS (n): …` / `-- ARGV (n): …` / `-- Refusals: …` of each Lua function's header.
    struct Header {
        keys: Arity,
        args: Arity,
        refusals: Vec<String>,
        returns: bool,
    }

    fn arity(s: &str) -> Arity {
        let n = s.trim();
        match n.split_once('+') {
            Some((fixed, _)) => Arity::AtLeast(fixed.trim().parse().expect("fixed part")),
            None => Arity::Exactly(n.parse().unwrap_or_else(|_| panic!("arity `{n}`"))),
        }
    }

    fn headers(lua: &str) -> std::collections::HashMap<String, Header> {
        let mut out = std::collections::HashMap::new();
        let lines: Vec<&str> = lua.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(name) = line
                .strip_prefix("local function ")
                .and_then(|r| r.split_once('(').map(|(n, _)| n.to_string()))
            else {
                continue;
            };
            let mut h = Header {
                keys: Arity::Exactly(usize::MAX),
                args: Arity::Exactly(usize::MAX),
                refusals: Vec::new(),
                returns: false,
            };
            let mut j = i;
            while j > 0 && lines[j - 1].starts_with("--") {
                j -= 1;
                let l = lines[j];
                let count = |tag: &str| {
                    l.strip_prefix(tag)
                        .and_then(|r| r.strip_prefix(" ("))
                        .and_then(|r| r.split_once(')'))
                        .map(|(n, _)| arity(n))
                };
                if let Some(a) = count("-- KEYS") {
                    h.keys = a;
                }
                if let Some(a) = count("-- ARGV") {
                    h.args = a;
                }
                if let Some(r) = l.strip_prefix("-- Refusals:") {
                    h.refusals = r
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect();
                }
                if l.starts_with("-- Returns") {
                    h.returns = true;
                }
            }
            out.insert(name, h);
        }
        out
    }

    #[test]
    fn every_function_header_matches_its_wrapper() {
        let h = headers(migrate::LIBRARY);
        let registered: Vec<&str> = migrate::LIBRARY
            .lines()
            .filter_map(|l| {
                l.split("function_name = '")
                    .nth(1)
                    .or_else(|| l.strip_prefix("redis.register_function('"))
            })
            .filter_map(|r| r.split('\'').next())
            .collect();
        let declared = all();
        for f in &declared {
            assert!(
                registered.contains(&f.name),
                "{} is not registered in the library",
                f.name
            );
            let hd = h
                .get(f.name)
                .unwrap_or_else(|| panic!("no Lua function {}", f.name));
            assert_eq!(hd.keys, f.keys, "KEYS of {}", f.name);
            assert_eq!(hd.args, f.args, "ARGV of {}", f.name);
            assert!(hd.returns, "{} has no Returns line", f.name);
            let codes: Vec<String> = f.refusals.iter().map(|r| r.code().to_string()).collect();
            assert_eq!(hd.refusals, codes, "Refusals of {}", f.name);
        }
        for name in registered {
            if name == "swarmstate_version" {
                continue;
            }
            assert!(
                declared.iter().any(|f| f.name == name),
                "{name} is registered but the service declares no wrapper for it"
            );
        }
    }
}
