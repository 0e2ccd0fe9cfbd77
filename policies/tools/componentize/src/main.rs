//! `componentize CORE.wasm OUT.wasm`: turns a core module that wit-bindgen built for
//! wasm32-unknown-unknown into a component, from the component type wit-bindgen embedded in it.
//! The module imports nothing but its WIT interfaces, so the component needs no WASI adapter
//! and imports only those interfaces.

use anyhow::{Context, Result, bail};
use wit_component::ComponentEncoder;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        bail!("usage: componentize CORE.wasm OUT.wasm");
    };
    let module = std::fs::read(input).with_context(|| format!("reading {input}"))?;
    let component = ComponentEncoder::default()
        .module(&module)
        .with_context(|| format!("{input}: no component type embedded by wit-bindgen?"))?
        .validate(true)
        .encode()
        .with_context(|| format!("encoding {input} as a component"))?;
    std::fs::write(output, component).with_context(|| format!("writing {output}"))?;
    Ok(())
}
