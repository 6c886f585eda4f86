//! siphon's end-to-end tests: one test binary (see the crate layout in docs/architecture.md).

mod acc;
mod async_http;
mod async_relay;
mod cfg_rpc;
mod cli;
mod ctl;
mod counters;
mod custom_cfg;
mod evapi;
mod event_jsonrpc;
mod golden;
mod harness;
mod jsonrpcc;
mod jsonrpcs;
mod proxy;
mod proxy_interop;
mod record_route;
mod registrar;
mod sanity_maxfwd;
mod seeds;
mod sip;
mod siputils_textops;
mod suspend;
mod tls;
mod transport_limits;
mod xhttp;
