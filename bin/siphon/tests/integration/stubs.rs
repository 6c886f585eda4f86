//! Test-only stand-ins for the modules that later issues build
//! (async_http). They declare the seed's parameters, functions
//! (with argument kinds, so route names and result PVs are checked) and PVs;
//! they are never run. Each issue that builds the real thing removes its stub
//! from here (the SIP core's stubs are gone: it is built): the shipped
//! binary's registry never contains stubs.

use siphon_script::api::*;
use siphon_script::{
    ArgKind, FunctionSpec, ModuleDef, ParamSpec, PvClassSpec, Registry, RouteTable, Value,
};
use std::sync::Arc;

struct Stub {
    fns: Vec<FunctionSpec>,
    pvs: Vec<PvClassSpec>,
    events: Vec<&'static str>,
}

impl Module for Stub {
    fn functions(&self) -> Vec<FunctionSpec> {
        self.fns.clone()
    }
    fn pv_classes(&self) -> Vec<PvClassSpec> {
        self.pvs.clone()
    }
    fn event_routes(&self) -> Vec<&'static str> {
        self.events.clone()
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn f(name: &'static str, params: &[ArgKind]) -> FunctionSpec {
    FunctionSpec::new(name, params, |_, _| FnResult::Code(-1))
}

fn pv(name: &'static str, inner: PvInner) -> PvClassSpec {
    struct Null;
    impl PvAccess for Null {
        fn get(&self, _: &mut siphon_script::Exec<'_>, _: PvIdx) -> Value {
            Value::Null
        }
    }
    PvClassSpec::new(
        name,
        inner,
        Arc::new(|_| Ok(Arc::new(Null) as Arc<dyn PvAccess>)),
    )
}

fn module(
    name: &'static str,
    params: Vec<ParamSpec>,
    fns: Vec<FunctionSpec>,
    pvs: Vec<PvClassSpec>,
    events: Vec<&'static str>,
) -> ModuleDef {
    let stub = Arc::new(Stub { fns, pvs, events });
    ModuleDef {
        name,
        params,
        instantiate: Arc::new(move |_| {
            Ok(Arc::new(Stub {
                fns: stub.fns.clone(),
                pvs: stub.pvs.clone(),
                events: stub.events.clone(),
            }) as Arc<dyn Module>)
        }),
    }
}

/// The shipped registry plus stubs for what is not built yet.
pub(crate) fn registry() -> Registry {
    use ArgKind::*;
    let mut r = siphon::registry();
    let route = Route(RouteTable::Named);
    if r.def("async_http").is_none() {
        r.add(module(
            "async_http",
            vec![
                ParamSpec::int("workers"),
                ParamSpec::int("http_timeout"),
                ParamSpec::int("hash_size"),
            ],
            vec![
                f("http_async_get", &[Str, route]),
                f("http_async_post", &[Str, Str, route]),
            ],
            vec![],
            vec![],
        ));
    }
    r
}
