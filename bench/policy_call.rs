//! The cost of one policy call alone, without the proxy around it: `Module::call` of a
//! policy component on one `session.created` event, as cachet's policy threads make it
//! (instance reuse, lowering the event, the wasm, lifting the actions), with the offline
//! backend (the sessions policies make no host calls that wait).
//!
//! ```text
//! cargo bench --bench policy_call -- policies/out/sessions.wasm [more.wasm ...]
//! ```
//!
//! For each component: calls back to back (the hot figure), then calls spaced by idle gaps
//! of 50 µs to 1 ms, as events arrive in practice: a call after its thread and caches went
//! cold costs more, and that is what `POLICY LIST` reports from a running proxy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cachet::config::PolicyConfig;
use cachet::policy::{Backend, engine::Offline};

fn main() {
    let files: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if files.is_empty() {
        eprintln!("usage: cargo bench --bench policy_call -- FILE.wasm [FILE.wasm ...]");
        std::process::exit(2);
    }
    let host = cachet::policy::Host::new(false).expect("a wasmtime engine");
    let event = cachet::policy::engine::client_event(
        "session.created".into(),
        vec![
            ("sessionId".into(), bytes::Bytes::from("42")),
            ("teacherId".into(), bytes::Bytes::from("123")),
            ("schoolId".into(), bytes::Bytes::from("7")),
        ],
    );
    let backend: Arc<dyn Backend> = Arc::new(Offline);
    println!("| component | back to back µs/call | 50 µs gaps | 200 µs gaps | 1 ms gaps |");
    println!("|---|---:|---:|---:|---:|");
    for file in files {
        let config: PolicyConfig = toml::from_str(&format!(
            "name = \"bench\"\nmodule = {file:?}\nevents = [\"*\"]\n"
        ))
        .expect("a policy config");
        let version =
            cachet::policy::read_version(&host, &config).unwrap_or_else(|e| panic!("{file}: {e}"));
        let call = || {
            let actions = version.module.call(&event, backend.clone());
            assert!(actions.is_ok_and(|a| !a.is_empty()), "{file}: no actions");
        };
        // Warm up: the first calls instantiate and fault pages in.
        (0..200).for_each(|_| call());
        let mut row = vec![];
        let n = 20_000;
        let began = Instant::now();
        (0..n).for_each(|_| call());
        row.push(began.elapsed().as_secs_f64() * 1e6 / f64::from(n));
        for gap in [50, 200, 1000] {
            let n = 2_000;
            let mut total = Duration::ZERO;
            for _ in 0..n {
                std::thread::sleep(Duration::from_micros(gap));
                let began = Instant::now();
                call();
                total += began.elapsed();
            }
            row.push(total.as_secs_f64() * 1e6 / f64::from(n));
        }
        let name = std::path::Path::new(&file)
            .file_name()
            .map_or(file.clone(), |n| n.to_string_lossy().into_owned());
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
            row[0], row[1], row[2], row[3]
        );
    }
}
