//! Route execution speed: a 30-statement route with PV reads, string
//! concatenation, a regex match and transformations, run over a fresh
//! context each time (as each SIP request gets one).

use criterion::{Criterion, criterion_group, criterion_main};
use siphon_cfg::PreOptions;
use siphon_script::{Registry, RouteType, load_str};
use std::hint::black_box;

const CFG: &str = r#"
route[CLASSIFY] {
    if ($var(user) =~ "^\+?1[0-9]{10}$") { return(1); }
    return(-1);
}
request_route {
    $var(user) = "+15550109999";
    $var(domain) = "example.org";
    $var(uri) = "sip:" + $var(user) + "@" + $var(domain);
    $avp(hops) = 1;
    $avp(hops) = 2;
    $var(n) = 0;
    $var(len) = $(var(uri){s.len});
    $var(host) = $(var(uri){s.select,1,@});
    $var(prefix) = $(var(user){s.substr,0,2});
    $var(lower) = $(var(domain){s.toupper}{s.tolower});
    if ($var(uri) =~ "^sip:\+1[0-9]+@example\.(org|com)$") { $var(n) = $var(n) + 1; }
    if ($var(len) > 20 && $var(prefix) == "+1") { $var(n) = $var(n) + 1; }
    if (route(CLASSIFY)) { $var(n) = $var(n) + 1; }
    $var(key) = $var(user) + ":" + $var(host);
    $var(count) = $avp(hops) + $(avp(hops)[1]);
    $shv(total) = $shv(total) + 1;
    switch ($var(prefix)) {
        case "+1": $var(region) = "nanp"; break;
        case "+4": $var(region) = "eu"; break;
        default: $var(region) = "other";
    }
    $var(i) = 0;
    while ($var(i) < 3) { $var(i) = $var(i) + 1; }
    $var(num) = $(var(user){s.numeric});
    $var(tag) = $var(region) + "-" + $var(num);
    setflag(1);
    if (isflagset(1)) { $var(n) = $var(n) + 1; }
    if ($var(n) != 4) { xerr("unexpected $var(n)\n"); }
    $var(done) = 1;
    return(1);
}
"#;

fn bench(c: &mut Criterion) {
    let l = load_str("bench.cfg", CFG, &PreOptions::default(), &Registry::new());
    let p = l.program.expect("bench config compiles");
    let r = p.request_route().expect("request_route");
    // The route must do what it says before its speed means anything.
    let mut ctx = p.new_ctx(RouteType::REQUEST);
    p.run(r, &mut ctx);
    let get = |name: &str| ctx.vars[p.var_slot(name).expect(name)].clone();
    assert_eq!(get("n"), siphon_script::Value::Int(4));
    assert_eq!(get("tag").to_string(), "nanp-15550109999");
    assert_eq!(get("count"), siphon_script::Value::Int(3));
    c.bench_function("route_30_statements", |b| {
        b.iter(|| {
            let mut ctx = p.new_ctx(RouteType::REQUEST);
            black_box(p.run(r, &mut ctx));
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
