//! What a plugin is granted beyond plain WASI. Deny by default: a plugin
//! with no grants gets no kv, no outbox topic and no outbound HTTP.

use std::collections::BTreeMap;

use serde::Serialize;

/// The capabilities granted to one plugin in config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Grants {
    /// Key-value state in the plugin's own namespace.
    pub kv: bool,
    /// Topics it may emit on, each with the sink URL its events go to.
    pub outbox_topics: BTreeMap<String, String>,
    /// Outbound HTTP requests it may make; anything else is refused.
    pub http: Vec<HttpRule>,
    /// The largest HTTP response body it may read.
    pub http_max_response: usize,
}

/// One allowed HTTP destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpRule {
    /// `http` or `https`.
    pub scheme: String,
    /// Lower-case host name or IP literal.
    pub host: String,
    pub port: u16,
    /// Allowed methods (upper case); `None` allows any.
    pub methods: Option<Vec<String>>,
}

/// The default cap on an HTTP response body a plugin reads.
pub const DEFAULT_HTTP_MAX_RESPONSE: usize = 1 << 20;

impl HttpRule {
    /// Parses `scheme://host[:port]` (any path is ignored).
    pub fn parse(url: &str, methods: Option<Vec<String>>) -> Result<HttpRule, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        let scheme = uri
            .scheme_str()
            .ok_or_else(|| format!("URL {url:?} has no scheme"))?
            .to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            other => {
                return Err(format!(
                    "URL {url:?}: scheme {other:?} is not http or https"
                ));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("URL {url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let methods = match methods {
            None => None,
            Some(ms) if ms.is_empty() => {
                return Err(
                    "methods is empty: list the methods to allow, or leave it out to allow any"
                        .into(),
                );
            }
            Some(ms) => Some(
                ms.into_iter()
                    .map(|m| {
                        let m = m.to_ascii_uppercase();
                        match http::Method::from_bytes(m.as_bytes()) {
                            Ok(_) => Ok(m),
                            Err(_) => Err(format!("invalid HTTP method {m:?}")),
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(HttpRule {
            scheme,
            host,
            port: uri.port_u16().unwrap_or(default_port),
            methods,
        })
    }

    /// Whether this rule allows `method` to `scheme://host:port`.
    pub fn allows(&self, scheme: &str, host: &str, port: u16, method: &str) -> bool {
        self.scheme == scheme
            && self.host == host
            && self.port == port
            && self
                .methods
                .as_ref()
                .is_none_or(|ms| ms.iter().any(|m| m == method))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_scheme_host_port_and_method() {
        let rule =
            HttpRule::parse("https://Hooks.Example.com/path", Some(vec!["post".into()])).unwrap();
        assert_eq!(
            (rule.scheme.as_str(), rule.host.as_str(), rule.port),
            ("https", "hooks.example.com", 443)
        );
        assert!(rule.allows("https", "hooks.example.com", 443, "POST"));
        assert!(!rule.allows("https", "hooks.example.com", 443, "GET"));
        assert!(!rule.allows("http", "hooks.example.com", 443, "POST"));
        assert!(!rule.allows("https", "hooks.example.com", 8443, "POST"));
        assert!(!rule.allows("https", "evil.example.com", 443, "POST"));
        let any = HttpRule::parse("http://127.0.0.1:8080", None).unwrap();
        assert!(any.allows("http", "127.0.0.1", 8080, "DELETE"));
        assert!(HttpRule::parse("ftp://x", None).is_err());
        assert!(HttpRule::parse("http://x", Some(vec![])).is_err());
        assert!(HttpRule::parse("http://x", Some(vec!["NOT A METHOD".into()])).is_err());
    }
}
