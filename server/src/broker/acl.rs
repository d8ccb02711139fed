//! Topic access rules of the embedded broker from a Mosquitto ACL file (`acl_file`), so one
//! file serves both brokers: `user`, `topic [read|write|readwrite] <filter>` and
//! `pattern [read|write|readwrite] <filter>` with `%u` (user name) and `%c` (client id).

/// The deploy ACL (`deploy/mosquitto/acl`), used when `[mqtt] embedded_acl_file` is not set.
/// A unit test keeps it equal to the deploy file.
pub const DEPLOY_ACL: &str = "\
# Mosquitto ACL for Qingnuan (topics: shared/CONTRACT.md \"MQTT\").
# A gateway logs in with its gateway id as user name (%u below): it may publish only
# under its own prefix qn/v1/gw/<id>/ (readings, retained status, last will) and read
# only its own config topic. Anything else it publishes is dropped by the broker.

# The server reads every gateway's topics (and may push per-gateway config).
user qingnuan-server
topic read qn/v1/gw/#
topic read $share/qingnuan/qn/v1/gw/#
topic write qn/v1/gw/+/config

# Every other user: a gateway.
pattern write qn/v1/gw/%u/#
pattern read qn/v1/gw/%u/config
";

/// What a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Access {
    read: bool,
    write: bool,
}

/// One `topic` or `pattern` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    filter: String,
}

/// Parsed ACL: per-user `topic` rules and the `pattern` rules every user gets (as in
/// Mosquitto, `topic` lines before the first `user` line are for anonymous clients).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: std::collections::HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl Acl {
    /// Parses an ACL file; errors name the 1-based line. `deny` rules, which this broker does
    /// not implement, are refused rather than ignored.
    pub fn parse(text: &str) -> Result<Acl, String> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (i, line) in text.lines().enumerate() {
            let bad = |what: &str| format!("line {}: {what}", i + 1);
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(bad("user without a name"));
                    }
                    acl.users.entry(rest.to_string()).or_default();
                    user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest).map_err(|e| bad(&e))?;
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else if let Some(u) = &user {
                        acl.users.entry(u.clone()).or_default().push(rule);
                    } else {
                        acl.anonymous.push(rule);
                    }
                }
                other => return Err(bad(&format!("unknown keyword {other:?}"))),
            }
        }
        Ok(acl)
    }

    /// Reads and parses an ACL file.
    pub fn load(path: &std::path::Path) -> Result<Acl, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Acl::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The rules that apply to `user` (`None`: anonymous) with `client_id`, patterns
    /// substituted. A pattern whose `%u`/`%c` value holds `+`, `#` or `/` grants nothing
    /// (such a name could widen the pattern); an anonymous client gets no patterns.
    fn rules(&self, user: Option<&str>, client_id: &str) -> Vec<Rule> {
        let mut out = match user {
            None => self.anonymous.clone(),
            Some(u) => self.users.get(u).cloned().unwrap_or_default(),
        };
        let Some(u) = user else {
            return out;
        };
        let unsafe_name = |s: &str| s.is_empty() || s.contains(['+', '#', '/']);
        for p in &self.patterns {
            let needs_u = p.filter.contains("%u");
            let needs_c = p.filter.contains("%c");
            if (needs_u && unsafe_name(u)) || (needs_c && unsafe_name(client_id)) {
                continue;
            }
            out.push(Rule {
                access: p.access,
                filter: p.filter.replace("%u", u).replace("%c", client_id),
            });
        }
        out
    }

    /// The checker for one connection.
    pub fn for_client(&self, user: Option<&str>, client_id: &str) -> ClientAcl {
        ClientAcl {
            rules: self.rules(user, client_id),
        }
    }
}

fn parse_rule(rest: &str) -> Result<Rule, String> {
    let (first, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let (access, filter) = match first {
        "read" => ((true, false), tail.trim()),
        "write" => ((false, true), tail.trim()),
        "readwrite" => ((true, true), tail.trim()),
        "deny" => return Err("deny rules are not supported by the embedded broker".into()),
        _ => ((true, true), rest),
    };
    if filter.is_empty() || !valid_filter(filter) {
        return Err(format!("{filter:?} is not a topic filter"));
    }
    Ok(Rule {
        access: Access {
            read: access.0,
            write: access.1,
        },
        filter: filter.to_string(),
    })
}

/// The rules of one logged-in client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAcl {
    rules: Vec<Rule>,
}

impl ClientAcl {
    /// Whether the client may publish to `topic` (a topic name, no wildcards).
    pub fn may_publish(&self, topic: &str) -> bool {
        !topic.is_empty()
            && !topic.contains(['+', '#'])
            && self
                .rules
                .iter()
                .any(|r| r.access.write && topic_matches(topic, &r.filter))
    }

    /// Whether the client may subscribe to `filter`: only if every topic it can match is
    /// readable under one rule (so `qn/#` is refused to a gateway that may read only its
    /// config topic). A shared subscription `$share/<group>/<f>` is judged by the rule that
    /// names it literally or by `<f>`.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        if !valid_filter(filter) {
            return false;
        }
        let readable = |f: &str| {
            self.rules
                .iter()
                .any(|r| r.access.read && filter_covers(&r.filter, f))
        };
        if readable(filter) {
            return true;
        }
        match filter
            .strip_prefix("$share/")
            .and_then(|r| r.split_once('/'))
        {
            Some((group, inner)) if !group.is_empty() && valid_filter(inner) => readable(inner),
            _ => false,
        }
    }
}

/// MQTT filter syntax: `#` only as the whole last level, `+` only as a whole level.
fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    levels
        .iter()
        .enumerate()
        .all(|(i, l)| (*l == "#" && i == last) || *l == "+" || !l.contains(['+', '#']))
}

/// Whether topic name `topic` matches `filter` (MQTT 3.1.1 §4.7; a wildcard in the first
/// level does not match a `$` topic).
fn topic_matches(topic: &str, filter: &str) -> bool {
    let mut t = topic.split('/');
    let mut first = true;
    for f in filter.split('/') {
        if f == "#" {
            return !(first && topic.starts_with('$'));
        }
        match t.next() {
            None => return false,
            Some(level) => {
                if f == "+" {
                    if first && level.starts_with('$') {
                        return false;
                    }
                } else if f != level {
                    return false;
                }
            }
        }
        first = false;
    }
    t.next().is_none()
}

/// Whether every topic that `filter` can match is matched by `rule` (both valid filters).
fn filter_covers(rule: &str, filter: &str) -> bool {
    let mut r = rule.split('/');
    let mut first = true;
    for f in filter.split('/') {
        let Some(rl) = r.next() else {
            return false;
        };
        if rl == "#" {
            return !(first && filter.starts_with('$'));
        }
        let ok = match (rl, f) {
            (_, "#") => false,
            ("+", l) => !(first && l.starts_with('$')),
            (rl, l) => rl == l,
        };
        if !ok {
            return false;
        }
        first = false;
    }
    // The filter ended: `a/#` also matches `a`, so a rule left with only `#` still covers.
    matches!((r.next(), r.next()), (None, _) | (Some("#"), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy() -> Acl {
        Acl::parse(DEPLOY_ACL).unwrap()
    }

    #[test]
    fn the_compiled_in_acl_is_the_deploy_file() {
        let file = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/mosquitto/acl"
        ))
        .unwrap();
        assert_eq!(file, DEPLOY_ACL);
    }

    #[test]
    fn a_gateway_publishes_only_under_its_own_prefix() {
        let a = deploy().for_client(Some("gw-a"), "gw-a");
        assert!(a.may_publish("qn/v1/gw/gw-a/readings"));
        assert!(a.may_publish("qn/v1/gw/gw-a/status"));
        assert!(!a.may_publish("qn/v1/gw/gw-b/readings"));
        assert!(!a.may_publish("qn/v1/gw/gw-ab/readings"));
        // `x/#` also matches `x` (MQTT 3.1.1 §4.7.1.2), in Mosquitto too.
        assert!(a.may_publish("qn/v1/gw/gw-a"));
        assert!(!a.may_publish("qn/v1/gw/+/readings"));
        assert!(!a.may_publish("other"));
        // Its name cannot widen the pattern.
        let wild = deploy().for_client(Some("+"), "x");
        assert!(!wild.may_publish("qn/v1/gw/gw-b/readings"));
        assert!(!wild.may_publish("qn/v1/gw/+/readings"));
    }

    #[test]
    fn a_gateway_reads_only_its_config_topic() {
        let a = deploy().for_client(Some("gw-a"), "gw-a");
        assert!(a.may_subscribe("qn/v1/gw/gw-a/config"));
        for f in [
            "qn/v1/gw/gw-b/config",
            "qn/v1/gw/+/config",
            "qn/v1/gw/gw-a/#",
            "qn/#",
            "#",
            "+/v1/gw/gw-a/config",
            "$share/g/qn/v1/gw/gw-b/config",
            "qn/v1/gw/gw-a/config/x",
            "bad#",
        ] {
            assert!(!a.may_subscribe(f), "{f}");
        }
        assert!(a.may_subscribe("$share/g/qn/v1/gw/gw-a/config"));
    }

    #[test]
    fn the_server_reads_every_gateway_and_writes_config() {
        let s = deploy().for_client(Some("qingnuan-server"), "qingnuan-server");
        for f in [
            "qn/v1/gw/+/readings",
            "qn/v1/gw/+/status",
            "qn/v1/gw/#",
            "qn/v1/gw",
            "$share/qingnuan/qn/v1/gw/+/readings",
            "$share/other/qn/v1/gw/+/status",
        ] {
            assert!(s.may_subscribe(f), "{f}");
        }
        assert!(!s.may_subscribe("#"));
        assert!(!s.may_subscribe("qn/#"));
        assert!(s.may_publish("qn/v1/gw/gw-a/config"));
        assert!(!s.may_publish("qn/v1/gw/gw-a/readings"));
    }

    #[test]
    fn matching_follows_mqtt() {
        assert!(topic_matches("a/b", "a/#"));
        assert!(topic_matches("a", "a/#"));
        assert!(topic_matches("a/b/c", "a/+/c"));
        assert!(!topic_matches("a/b/c", "a/+"));
        assert!(!topic_matches("$SYS/x", "#"));
        assert!(!topic_matches("$SYS/x", "+/x"));
        assert!(topic_matches("$SYS/x", "$SYS/#"));
        assert!(filter_covers("a/#", "a"));
        assert!(filter_covers("a/#", "a/+/b"));
        assert!(filter_covers("a/+/c", "a/+/c"));
        assert!(!filter_covers("a/+/c", "a/#"));
        assert!(!filter_covers("a/b", "a/+"));
        assert!(!filter_covers("a/b", "a/b/c"));
        assert!(!filter_covers("a/b/c", "a/b"));
        assert!(!filter_covers("#", "$SYS/#"));
    }

    #[test]
    fn bad_lines_are_named() {
        assert!(Acl::parse("topic deny x\n").unwrap_err().contains("line 1"));
        assert!(Acl::parse("\nfoo bar\n").unwrap_err().starts_with("line 2"));
        assert!(Acl::parse("user\n").is_err());
        assert!(Acl::parse("topic read a/#/b\n").is_err());
        // No access word: readwrite, as in Mosquitto; before any user: anonymous.
        let acl = Acl::parse("topic x/y\n").unwrap();
        let anon = acl.for_client(None, "c");
        assert!(anon.may_publish("x/y") && anon.may_subscribe("x/y"));
        assert!(!acl.for_client(Some("u"), "c").may_publish("x/y"));
        let c = Acl::parse("pattern write c/%c\n").unwrap();
        assert!(c.for_client(Some("u"), "id").may_publish("c/id"));
        assert!(!c.for_client(Some("u"), "a/b").may_publish("c/a/b"));
    }
}
