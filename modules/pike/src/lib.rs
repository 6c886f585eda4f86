//! pike (Kamailio): flood detection per source IP, shared by every worker.
//!
//! - `pike_check_req()`: 1 when the source is under the density, -1 when it
//!   is blocked, -2 for the request that blocks it (logged once).
//! - Params `sampling_time_unit` (seconds, default 2), `reqs_density_per_unit`
//!   (default 30), `remove_latency` (seconds, default 120), `pike_log_level`
//!   (the level of the "PIKE - BLOCKing" line: <= -1 error, 0 warning, 1..2
//!   info, 3 debug, as Kamailio's L_* values).
//! - Kamailio's tree of address prefixes (see [`state`]): the first requests
//!   of a new source build its branch; its address is blocked while its hits
//!   in the current or the previous unit reach the density, unblocked by the
//!   timer once they do not, forgotten `remove_latency` after its last request.
//! - RPC `pike.top [ALL|HOT|WARM]`: `{max_hits, list: [{ip_addr,
//!   leaf_hits_prev, leaf_hits_curr, expires, status}], number_of_rows}`.

pub mod state;

use serde_json::json;
use siphon_script::api::*;
use siphon_script::rpc::{RpcFailure, RpcSpec};
use siphon_script::sip::SipCtx;
use siphon_script::{FunctionSpec, ModuleDef, ParamSpec, RouteType};
use state::{Pike, Verdict};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// The module.
pub struct PikeMod {
    state: Arc<Mutex<Pike>>,
    epoch: Instant,
    unit: u64,
    log_level: i64,
}

impl PikeMod {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }
    fn lock(&self) -> MutexGuard<'_, Pike> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn positive(v: &ParamValue) -> Result<(), String> {
    match v {
        ParamValue::Int(n) if *n > 0 => Ok(()),
        _ => Err("must be a positive integer".into()),
    }
}

/// `loadmodule "pike.so"`.
pub fn def() -> ModuleDef {
    ModuleDef {
        name: "pike",
        params: vec![
            ParamSpec::int("sampling_time_unit").check(positive),
            ParamSpec::int("reqs_density_per_unit").check(positive),
            ParamSpec::int("remove_latency").check(positive),
            ParamSpec::int("pike_log_level"),
        ],
        instantiate: Arc::new(|cfg| {
            let unit = cfg.int("sampling_time_unit").unwrap_or(2).max(1) as u64;
            let density = cfg.int("reqs_density_per_unit").unwrap_or(30).max(1) as u32;
            let latency = cfg.int("remove_latency").unwrap_or(120).max(1) as u64;
            Ok(Arc::new(PikeMod {
                state: Arc::new(Mutex::new(Pike::new(unit, density, latency))),
                epoch: Instant::now(),
                unit,
                log_level: cfg.int("pike_log_level").unwrap_or(0),
            }) as Arc<dyn Module>)
        }),
    }
}

impl PikeMod {
    fn log_block(&self, ip: std::net::IpAddr) {
        match self.log_level {
            l if l <= -1 => tracing::error!("PIKE - BLOCKing ip {ip}, node=1"),
            0 => tracing::warn!("PIKE - BLOCKing ip {ip}, node=1"),
            1 | 2 => tracing::info!("PIKE - BLOCKing ip {ip}, node=1"),
            _ => tracing::debug!("PIKE - BLOCKing ip {ip}, node=1"),
        }
    }
}

impl PikeMod {
    fn log_unblock(&self, ip: std::net::IpAddr) {
        match self.log_level {
            l if l <= -1 => tracing::error!("PIKE - UNBLOCKing ip {ip}"),
            0 => tracing::warn!("PIKE - UNBLOCKing ip {ip}"),
            1 | 2 => tracing::info!("PIKE - UNBLOCKing ip {ip}"),
            _ => tracing::debug!("PIKE - UNBLOCKing ip {ip}"),
        }
    }
}

impl Module for PikeMod {
    fn functions(&self) -> Vec<FunctionSpec> {
        let me = self.handle();
        vec![
            FunctionSpec::new("pike_check_req", &[], move |ex, _a| {
                let Some(s) = ex.ctx.ext.get::<SipCtx>() else {
                    return FnResult::Code(-1);
                };
                let ip = s.peer.src.ip();
                let v = me.lock().check(ip, me.now());
                if v == Verdict::FirstBlocked {
                    me.log_block(ip);
                }
                FnResult::Code(v.code())
            })
            .routes(
                RouteType::REQUEST
                    .or(RouteType::FAILURE)
                    .or(RouteType::BRANCH),
            ),
        ]
    }
    fn rpc_commands(&self) -> Vec<RpcSpec> {
        let me = self.handle();
        vec![RpcSpec::new(
            "pike.top",
            "pike.top Dump parts of the pike table",
            move |c| {
                // As Kamailio: ALL, HOT (the default) or WARM (which lists nothing).
                let opt = c.str(0).unwrap_or_else(|| "HOT".into());
                let filter = if opt.contains("ALL") {
                    Some(false)
                } else if opt.contains("HOT") {
                    Some(true)
                } else if opt.contains("WARM") {
                    None
                } else {
                    return Err(RpcFailure {
                        code: 500,
                        message: "Bad argument. Select: ALL, HOT or WARM".into(),
                    });
                };
                let now = me.now();
                let st = me.lock();
                let list: Vec<serde_json::Value> = match filter {
                    None => Vec::new(),
                    Some(hot_only) => st
                        .top(now, hot_only)
                        .into_iter()
                        .map(|e| {
                            json!({
                                "ip_addr": e.ip.to_string(),
                                "leaf_hits_prev": e.prev,
                                "leaf_hits_curr": e.curr,
                                "expires": e.expires,
                                "status": e.status,
                            })
                        })
                        .collect(),
                };
                Ok(json!({
                    "max_hits": st.limit(),
                    "list": list,
                    "number_of_rows": list.len(),
                }))
            },
        )]
    }
    fn start(&self, cx: &StartCx) -> Result<(), String> {
        let me = self.handle();
        let stop = cx.host.shutdown();
        let every = std::time::Duration::from_secs(self.unit);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let now = me.now();
                for ip in me.lock().sweep(now) {
                    me.log_unblock(ip);
                }
            }
        });
        Ok(())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl PikeMod {
    fn handle(&self) -> Arc<PikeMod> {
        Arc::new(PikeMod {
            state: self.state.clone(),
            epoch: self.epoch,
            unit: self.unit,
            log_level: self.log_level,
        })
    }
}
