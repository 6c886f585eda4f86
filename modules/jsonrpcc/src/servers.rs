//! The `servers` parameter: `host:port,priority` separated by spaces (pure).

/// One configured server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Priority (jsonrpcc: a higher number first; janssonrpcc: lower first).
    pub priority: i64,
    /// Weight inside its priority group (janssonrpcc; jsonrpcc uses round robin).
    pub weight: u32,
    /// Requests in flight at most on this server (0: the client's `max_pending`).
    pub hwm: usize,
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
            weight: 1,
            hwm: 0,
        });
    }
    if out.is_empty() {
        return Err("no servers given (\"host:port,priority …\")".into());
    }
    Ok(out)
}

/// One janssonrpcc `server` value: `conn=NAME;addr=HOST;port=N[;priority=P][;weight=W][;hwm=H][;proto=tcp]`.
pub fn parse_jansson_server(text: &str) -> Result<(String, ServerSpec), String> {
    let mut conn = None;
    let mut spec = ServerSpec {
        host: String::new(),
        port: 0,
        priority: 0,
        weight: 1,
        hwm: 0,
    };
    for item in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}`: expected key=value"))?;
        let (k, v) = (k.trim(), v.trim());
        let num = |what: &str| {
            v.parse::<i64>()
                .map_err(|_| format!("{what} `{v}` is not a number"))
        };
        match k {
            "conn" => conn = Some(v.to_string()),
            "addr" => spec.host = v.trim_start_matches('[').trim_end_matches(']').to_string(),
            "port" => {
                spec.port = u16::try_from(num("port")?)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("bad port `{v}`"))?
            }
            "priority" => spec.priority = num("priority")?,
            "weight" => {
                spec.weight =
                    u32::try_from(num("weight")?).map_err(|_| format!("bad weight `{v}`"))?
            }
            "hwm" => {
                spec.hwm = usize::try_from(num("hwm")?).map_err(|_| format!("bad hwm `{v}`"))?
            }
            "proto" if v == "tcp" => {}
            "proto" => return Err(format!("proto `{v}`: only tcp")),
            "srv" => {
                return Err("srv (DNS SRV) servers are not supported; give addr and port".into());
            }
            "md5_password" => return Err("md5_password (TCP-MD5) is not supported".into()),
            other => {
                return Err(format!(
                    "unknown key `{other}` (conn, addr, port, priority, weight, hwm, proto)"
                ));
            }
        }
    }
    let conn = conn.filter(|c| !c.is_empty()).ok_or("conn is required")?;
    if spec.host.is_empty() || spec.port == 0 {
        return Err("addr and port are required".into());
    }
    Ok((conn, spec))
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

    #[test]
    fn jansson_servers() {
        let (c, s) =
            parse_jansson_server("conn=users;addr=127.0.0.2;port=9999;priority=2;weight=3;hwm=10")
                .unwrap();
        assert_eq!(
            (
                c.as_str(),
                s.host.as_str(),
                s.port,
                s.priority,
                s.weight,
                s.hwm
            ),
            ("users", "127.0.0.2", 9999, 2, 3, 10)
        );
        let (_, s) = parse_jansson_server("conn=a;addr=[::1];port=1;").unwrap();
        assert_eq!((s.host.as_str(), s.priority, s.weight), ("::1", 0, 1));
        for bad in [
            "addr=a;port=1",
            "conn=a;port=1",
            "conn=a;addr=b;port=0",
            "conn=a;srv=_x._tcp",
            "conn=a;addr=b;port=1;x=1",
            "conn=a;addr=b;port=1;proto=udp",
        ] {
            assert!(parse_jansson_server(bad).is_err(), "{bad}");
        }
    }
}
