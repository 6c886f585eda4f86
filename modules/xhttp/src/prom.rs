//! xhttp_prom: Prometheus metrics over xhttp, as Kamailio's module of that
//! name. `prom_check_uri()` tells whether the request is for `/metrics`;
//! `prom_dispatch()` answers it with the internal statistics
//! (`xhttp_prom_stats`: `all`, or `group:` / `group:name` items separated by
//! `;` or spaces; none by default) and the metrics the script keeps:
//! counters and gauges declared with `prom_counter` / `prom_gauge`
//! (`name=NAME; label=a:b:c`, up to three labels) and changed with
//! `prom_counter_inc`, `prom_counter_reset`, `prom_gauge_set`,
//! `prom_gauge_reset`. Names start with `xhttp_prom_beginning`
//! (`kamailio_` by default, so existing dashboards keep working).
//!
//! The text exposition format is written here directly: it is a few lines of
//! `name{labels} value timestamp`, and the statistics already live in
//! siphon's own counters, so a metrics registry would only copy them.

use bytes::Bytes;
use siphon_script::api::*;
use siphon_script::http::{Exchange, HttpReply};
use siphon_script::{ArgKind, FunctionSpec, ModuleDef, ParamSpec, Program, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// The path `prom_check_uri()` accepts.
pub const PATH: &str = "/metrics";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug)]
struct Metric {
    kind: Kind,
    labels: Vec<String>,
    values: Mutex<BTreeMap<Vec<String>, f64>>,
}

/// Which internal statistics to export.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Selection {
    All,
    Some(Vec<String>),
}

impl Selection {
    fn wants(&self, stat: &str) -> bool {
        match self {
            Selection::All => true,
            Selection::Some(items) => items.iter().any(|i| {
                if let Some(group) = i.strip_suffix(':') {
                    stat.split_once(':').is_some_and(|(g, _)| g == group)
                } else {
                    i == stat
                }
            }),
        }
    }
}

struct Prom {
    prefix: String,
    stats: Selection,
    metrics: HashMap<String, Arc<Metric>>,
}

/// The loaded module.
pub struct XhttpProm(Arc<Prom>);

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `name=NAME; label=a:b:c` → (name, labels).
fn parse_decl(text: &str) -> Result<(String, Vec<String>), String> {
    let mut name = None;
    let mut labels = Vec::new();
    for item in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("`{item}`: expected key=value"))?;
        match k.trim() {
            "name" => name = Some(v.trim().to_string()),
            "label" => {
                labels = v
                    .split(':')
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect()
            }
            other => return Err(format!("unknown key `{other}` (name, label)")),
        }
    }
    let name = name.filter(|n| !n.is_empty()).ok_or("name is required")?;
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("`{name}`: a metric name is letters, digits and _"));
    }
    if labels.len() > 3 {
        return Err(format!("{name}: at most three labels"));
    }
    Ok((name, labels))
}

impl Prom {
    fn render(&self, program: &Program) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut out = String::with_capacity(4096);
        if self.metrics.is_empty() {
            out.push_str("# NO User defined metrics\n");
        } else {
            out.push_str("# User defined metrics\n");
            let mut names: Vec<_> = self.metrics.keys().collect();
            names.sort();
            for n in names {
                let m = &self.metrics[n];
                let full = format!("{}{}", self.prefix, n);
                let kind = if m.kind == Kind::Counter {
                    "counter"
                } else {
                    "gauge"
                };
                let _ = writeln!(out, "# TYPE {full} {kind}");
                let Ok(values) = m.values.lock() else {
                    continue;
                };
                for (lv, v) in values.iter() {
                    let labels = if m.labels.is_empty() {
                        String::new()
                    } else {
                        let pairs: Vec<String> = m
                            .labels
                            .iter()
                            .zip(lv)
                            .map(|(l, v)| format!("{l}=\"{}\"", escape_label(v)))
                            .collect();
                        format!("{{{}}}", pairs.join(", "))
                    };
                    let _ = writeln!(out, "{full}{labels} {v} {now}");
                }
            }
        }
        out.push('\n');
        if self.stats != Selection::Some(vec![]) {
            out.push_str("# Kamailio whole internal statistics\n");
            let mut stats = program.stat_snapshot();
            stats.sort();
            for (name, v) in stats.into_iter().filter(|(n, _)| self.stats.wants(n)) {
                let _ = writeln!(
                    out,
                    "{}{} {v} {now}",
                    self.prefix,
                    sanitize(&name.replace(':', "_"))
                );
            }
        }
        out
    }

    fn metric(&self, name: &str, kind: Kind) -> Option<&Arc<Metric>> {
        let m = self.metrics.get(name)?;
        (m.kind == kind).then_some(m)
    }

    /// Applies `f` to the value of `name` with label values from args `first..`.
    fn update(
        &self,
        ex: &mut siphon_script::Exec<'_>,
        a: &Args,
        kind: Kind,
        first: usize,
        f: impl FnOnce(&mut f64),
    ) -> i32 {
        let name = a.text(0, ex);
        let Some(m) = self.metric(&name, kind) else {
            tracing::warn!("xhttp_prom: no {kind:?} named `{name}` (declare it with modparam)");
            return -1;
        };
        let lv: Vec<String> = (first..a.len()).map(|i| a.text(i, ex)).collect();
        if lv.len() != m.labels.len() {
            tracing::warn!(
                "xhttp_prom: `{name}` has {} labels, {} given",
                m.labels.len(),
                lv.len()
            );
            return -1;
        }
        match m.values.lock() {
            Ok(mut values) => {
                f(values.entry(lv).or_insert(0.0));
                1
            }
            Err(_) => -1,
        }
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(n) => Some(*n as f64),
        other => other.to_text().trim().parse().ok(),
    }
}

impl Module for XhttpProm {
    fn functions(&self) -> Vec<FunctionSpec> {
        use ArgKind::{Any, Str};
        let p = self.0.clone();
        let check = FunctionSpec::new("prom_check_uri", &[], |ex, _| {
            let url = ex
                .ctx
                .ext
                .get::<Exchange>()
                .map(|x| String::from_utf8_lossy(x.url()).into_owned())
                .unwrap_or_default();
            let path = url.split('?').next().unwrap_or("");
            if path == PATH || path.starts_with("/metrics/") {
                1.into()
            } else {
                (-1).into()
            }
        });
        let dispatch = FunctionSpec::new("prom_dispatch", &[], move |ex, _| {
            let body = p.render(ex.prog);
            let Some(x) = ex.ctx.ext.get_mut::<Exchange>() else {
                tracing::warn!("prom_dispatch: not handling an HTTP request");
                return (-1).into();
            };
            let ok = x.reply(HttpReply {
                status: 200,
                reason: "OK".into(),
                content_type: "text/plain; version=0.0.4".into(),
                body: Bytes::from(body),
                headers: Vec::new(),
            });
            if ok { 1.into() } else { (-1).into() }
        });
        let (p1, p2, p3, p4) = (
            self.0.clone(),
            self.0.clone(),
            self.0.clone(),
            self.0.clone(),
        );
        vec![
            check,
            dispatch,
            FunctionSpec::new(
                "prom_counter_inc",
                &[Str, Any, Str, Str, Str],
                move |ex, a| {
                    let Some(n) = number(&a.value(1, ex)).filter(|n| *n >= 0.0) else {
                        tracing::warn!(
                            "prom_counter_inc: the increment must be a number, 0 or more"
                        );
                        return (-1).into();
                    };
                    p1.update(ex, a, Kind::Counter, 2, |v| *v += n).into()
                },
            )
            .min_args(2),
            FunctionSpec::new("prom_counter_reset", &[Str, Str, Str, Str], move |ex, a| {
                p2.update(ex, a, Kind::Counter, 1, |v| *v = 0.0).into()
            })
            .min_args(1),
            FunctionSpec::new(
                "prom_gauge_set",
                &[Str, Any, Str, Str, Str],
                move |ex, a| {
                    let Some(n) = number(&a.value(1, ex)) else {
                        tracing::warn!("prom_gauge_set: the value must be a number");
                        return (-1).into();
                    };
                    p3.update(ex, a, Kind::Gauge, 2, |v| *v = n).into()
                },
            )
            .min_args(2),
            FunctionSpec::new("prom_gauge_reset", &[Str, Str, Str, Str], move |ex, a| {
                p4.update(ex, a, Kind::Gauge, 1, |v| *v = 0.0).into()
            })
            .min_args(1),
        ]
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn strings(cfg: &ModuleConfig, name: &str) -> Vec<String> {
    cfg.all(name)
        .iter()
        .map(|v| match v {
            ParamValue::Str(s) => s.clone(),
            ParamValue::Int(n) => n.to_string(),
        })
        .collect()
}

/// The module definition.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "xhttp_prom",
        params: vec![
            ParamSpec::str("xhttp_prom_stats"),
            ParamSpec::str("xhttp_prom_beginning"),
            ParamSpec::str("prom_counter").multi(),
            ParamSpec::str("prom_gauge").multi(),
            ParamSpec::str("prom_histogram").multi(),
            ParamSpec::int("xhttp_prom_buf_size").no_effect(),
            ParamSpec::int("xhttp_prom_timeout").no_effect(),
            ParamSpec::int("xhttp_prom_pkg_stats").no_effect(),
            ParamSpec::int("xhttp_prom_uptime_stat").no_effect(),
        ],
        instantiate: Arc::new(|cfg| {
            if !cfg.all("prom_histogram").is_empty() {
                return Err("prom_histogram is not supported; counters and gauges are".into());
            }
            let mut metrics = HashMap::new();
            for (kind, param) in [(Kind::Counter, "prom_counter"), (Kind::Gauge, "prom_gauge")] {
                for text in strings(cfg, param) {
                    let (name, labels) =
                        parse_decl(&text).map_err(|e| format!("{param} \"{text}\": {e}"))?;
                    let m = Metric {
                        kind,
                        values: Mutex::new(if labels.is_empty() {
                            BTreeMap::from([(vec![], 0.0)])
                        } else {
                            BTreeMap::new()
                        }),
                        labels,
                    };
                    if metrics.insert(name.clone(), Arc::new(m)).is_some() {
                        return Err(format!("{param}: `{name}` is declared twice"));
                    }
                }
            }
            let stats = match cfg.str("xhttp_prom_stats").unwrap_or_default().trim() {
                "all" => Selection::All,
                list => Selection::Some(
                    list.split([';', ' ', ','])
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect(),
                ),
            };
            Ok(Arc::new(XhttpProm(Arc::new(Prom {
                prefix: cfg
                    .str("xhttp_prom_beginning")
                    .unwrap_or_else(|| "kamailio_".into()),
                stats,
                metrics,
            }))) as Arc<dyn Module>)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_and_selection() {
        assert_eq!(
            parse_decl("name=cnt01; label=method:handler;"),
            Ok(("cnt01".into(), vec!["method".into(), "handler".into()]))
        );
        assert_eq!(parse_decl("name=g"), Ok(("g".into(), vec![])));
        assert!(parse_decl("label=a").is_err());
        assert!(parse_decl("name=a-b").is_err());
        assert!(parse_decl("name=a; label=w:x:y:z").is_err());
        let s = Selection::Some(vec!["core:".into(), "tm:created".into()]);
        assert!(s.wants("core:rcv_requests") && s.wants("tm:created") && !s.wants("tm:current"));
        assert_eq!(sanitize("core_rcv-requests.x"), "core_rcv_requests_x");
        assert_eq!(escape_label("a\"b\\"), "a\\\"b\\\\");
    }
}
