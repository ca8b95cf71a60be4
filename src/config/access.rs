//! Access rules (`[[access]]`): an hba-like list deciding, per database, user and source
//! address, whether a client may authenticate and with which methods. First match wins; when
//! rules are configured and none matches, the client is refused. No rules: everyone may try.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::AuthMethod;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessRule {
    #[serde(default = "any")]
    pub database: String,
    #[serde(default = "any")]
    pub user: String,
    /// CIDR ("10.0.0.0/8", "::1/128") or "*".
    #[serde(default = "any")]
    pub source: String,
    /// Allowed authentication methods; empty = any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// "allow" or "reject".
    #[serde(default = "allow")]
    pub action: String,
}

fn any() -> String {
    "*".into()
}
fn allow() -> String {
    "allow".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: bad prefix length"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_eq(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_eq(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

fn mask_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = (prefix / 8) as usize;
    if a[..full] != b[..full] {
        return false;
    }
    let rem = prefix % 8;
    rem == 0 || {
        let m = 0xffu8 << (8 - rem);
        a[full] & m == b[full] & m
    }
}

#[derive(Debug, Clone)]
pub struct AccessRule {
    pub database: Option<String>,
    pub user: Option<String>,
    pub source: Option<Cidr>,
    pub methods: Vec<AuthMethod>,
    pub allow: bool,
}

impl AccessRule {
    pub fn from_raw(r: &RawAccessRule) -> Result<AccessRule, (&'static str, String)> {
        let star = |s: &str| (s != "*").then(|| s.to_string());
        let methods = r
            .methods
            .iter()
            .map(|m| match m.as_str() {
                "scram-sha-256" => Ok(AuthMethod::ScramSha256),
                "md5" => Ok(AuthMethod::Md5),
                "password" => Ok(AuthMethod::Password),
                "trust" => Ok(AuthMethod::Trust),
                o => Err((
                    "methods",
                    format!("{o:?}: must be scram-sha-256, md5, password or trust"),
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(AccessRule {
            database: star(&r.database),
            user: star(&r.user),
            source: match r.source.as_str() {
                "*" => None,
                s => Some(Cidr::parse(s).map_err(|e| ("source", e))?),
            },
            methods,
            allow: match r.action.as_str() {
                "allow" => true,
                "reject" => false,
                o => return Err(("action", format!("{o:?}: must be \"allow\" or \"reject\""))),
            },
        })
    }

    fn matches(&self, database: &str, user: &str, ip: IpAddr) -> bool {
        self.database.as_deref().is_none_or(|d| d == database)
            && self.user.as_deref().is_none_or(|u| u == user)
            && self.source.is_none_or(|c| c.contains(ip))
    }
}

/// Decide for a client: `Ok(())` or the reason it is refused.
pub fn check(
    rules: &[AccessRule],
    database: &str,
    user: &str,
    ip: IpAddr,
    method: AuthMethod,
) -> Result<(), String> {
    if rules.is_empty() {
        return Ok(());
    }
    match rules.iter().find(|r| r.matches(database, user, ip)) {
        Some(r) if !r.allow => Err(format!("access rule rejects host \"{ip}\", user \"{user}\", database \"{database}\"")),
        Some(r) if !r.methods.is_empty() && !r.methods.contains(&method) => Err(format!(
            "authentication method of user \"{user}\" is not allowed from host \"{ip}\" for database \"{database}\""
        )),
        Some(_) => Ok(()),
        None => Err(format!("no access rule allows host \"{ip}\", user \"{user}\", database \"{database}\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("1.2.3.4/33").is_err());
        assert!(Cidr::parse("nope").is_err());
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn first_match_wins() {
        let raw = |src: &str, action: &str, methods: &[&str]| RawAccessRule {
            database: "app".into(),
            user: "*".into(),
            source: src.into(),
            methods: methods.iter().map(|s| s.to_string()).collect(),
            action: action.into(),
        };
        let rules: Vec<AccessRule> = [
            raw("10.0.0.0/8", "reject", &[]),
            raw("*", "allow", &["scram-sha-256"]),
        ]
        .iter()
        .map(|r| AccessRule::from_raw(r).unwrap())
        .collect();
        let ip = |s: &str| s.parse().unwrap();
        assert!(check(&rules, "app", "u", ip("10.0.0.1"), AuthMethod::ScramSha256).is_err());
        assert!(check(&rules, "app", "u", ip("127.0.0.1"), AuthMethod::ScramSha256).is_ok());
        assert!(check(&rules, "app", "u", ip("127.0.0.1"), AuthMethod::Md5).is_err());
        assert!(check(
            &rules,
            "other",
            "u",
            ip("127.0.0.1"),
            AuthMethod::ScramSha256
        )
        .is_err());
        assert!(check(&[], "other", "u", ip("127.0.0.1"), AuthMethod::Md5).is_ok());
    }
}
