//! The `servers` parameter: `host:port,priority` separated by spaces (pure).

/// One configured server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Priority: groups with a higher number are used first.
    pub priority: i64,
}

impl ServerSpec {
    /// `host:port` (`[v6]:port`) for messages and connecting.
    pub fn addr_text(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Parses `"host1:port1,prio1 host2:port2,prio2 …"`.
pub fn parse_servers(text: &str) -> Result<Vec<ServerSpec>, String> {
    let mut out = Vec::new();
    for item in text.split_whitespace() {
        let (hostport, prio) = item
            .rsplit_once(',')
            .ok_or_else(|| format!("`{item}`: expected host:port,priority"))?;
        let priority: i64 = prio
            .parse()
            .map_err(|_| format!("`{item}`: priority `{prio}` is not a number"))?;
        let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
            let (h, p) = rest
                .split_once("]:")
                .ok_or_else(|| format!("`{item}`: expected [ipv6]:port"))?;
            (h, p)
        } else {
            hostport
                .rsplit_once(':')
                .ok_or_else(|| format!("`{item}`: expected host:port,priority"))?
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{item}`: bad port `{port}`"))?;
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'_'))
        {
            return Err(format!("`{item}`: bad host `{host}`"));
        }
        out.push(ServerSpec {
            host: host.to_string(),
            port,
            priority,
        });
    }
    if out.is_empty() {
        return Err("no servers given (\"host:port,priority …\")".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_example_and_ipv6() {
        let s = parse_servers("localhost:9999,2 127.0.0.2:9999,2 backup.server:9999,1").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(
            (s[0].host.as_str(), s[0].port, s[0].priority),
            ("localhost", 9999, 2)
        );
        assert_eq!(s[2].priority, 1);
        let s = parse_servers(" [::1]:8080,5 ").unwrap();
        assert_eq!(
            (s[0].host.as_str(), s[0].addr_text()),
            ("::1", "[::1]:8080".to_string())
        );
        for bad in [
            "", "a:1", "a,1", "a:0,1", "a:x,1", "a:1,x", "[::1:8,1", "a b:1,1",
        ] {
            assert!(parse_servers(bad).is_err(), "{bad}");
        }
    }
}
