//! Checks a candidate plugin before and after compiling it: is it WebAssembly, is it a
//! component rather than a core module, which PostDog world does it implement, and does
//! it import only what the host provides. Each answer becomes a clear `PluginError`.

use wasmtime::Engine;
use wasmtime::component::Component;

use super::{PluginError, World};

/// The first eight bytes of a core module: magic + version 1.
const CORE_MODULE_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
/// The first eight bytes of a component: magic + version 0x0d, layer 1.
const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// Refuses anything that is not a component by its header, before the compiler sees it.
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), PluginError> {
    match bytes.get(..8) {
        Some(header) if header == COMPONENT_HEADER => Ok(()),
        Some(header) if header == CORE_MODULE_HEADER => Err(PluginError::CoreModule),
        Some(header) if header[..4] == COMPONENT_HEADER[..4] => Err(PluginError::Invalid {
            reason: format!(
                "unsupported WebAssembly version/layer bytes {:02x?}; expected a component \
                 (0d 00 01 00)",
                &header[4..]
            ),
        }),
        _ => Err(PluginError::NotWasm),
    }
}

/// The world a compiled component implements, from its export names.
pub(crate) fn detect_world(engine: &Engine, component: &Component) -> Result<World, PluginError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let found: Vec<World> = World::ALL
        .into_iter()
        .filter(|world| exports.iter().any(|name| name == world.export_name()))
        .collect();
    match found.as_slice() {
        [world] => Ok(*world),
        [] => Err(PluginError::NoWorld {
            exports: if exports.is_empty() {
                "none".to_string()
            } else {
                exports.join(", ")
            },
        }),
        several => Err(PluginError::Invalid {
            reason: format!(
                "the component implements several PostDog worlds ({}); a plugin implements one",
                several
                    .iter()
                    .map(|world| world.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// The component's imports (interface names), after refusing any outside WASI 0.2 and
/// `postdog:plugin@0.1.0`, which are named in the error.
pub(crate) fn check_imports(
    engine: &Engine,
    component: &Component,
) -> Result<Vec<String>, PluginError> {
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let unknown: Vec<&str> = imports
        .iter()
        .map(String::as_str)
        .filter(|name| !is_provided_import(name))
        .collect();
    if unknown.is_empty() {
        Ok(imports)
    } else {
        Err(PluginError::UnsupportedImports {
            imports: unknown.join(", "),
        })
    }
}

fn is_provided_import(name: &str) -> bool {
    (name.starts_with("wasi:") && name.contains("@0.2."))
        || (name.starts_with("postdog:plugin/") && name.ends_with("@0.1.0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_classified() {
        assert_eq!(check_header(b"hello world"), Err(PluginError::NotWasm));
        assert_eq!(check_header(b""), Err(PluginError::NotWasm));
        assert_eq!(
            check_header(&CORE_MODULE_HEADER),
            Err(PluginError::CoreModule)
        );
        assert_eq!(check_header(&COMPONENT_HEADER), Ok(()));
        assert!(matches!(
            check_header(&[0x00, 0x61, 0x73, 0x6d, 0x02, 0x00, 0x00, 0x00]),
            Err(PluginError::Invalid { .. })
        ));
    }

    #[test]
    fn provided_imports() {
        assert!(is_provided_import("wasi:io/streams@0.2.6"));
        assert!(is_provided_import("postdog:plugin/kv@0.1.0"));
        assert!(!is_provided_import("postdog:plugin/kv@0.2.0"));
        assert!(!is_provided_import("wasi:http/outgoing-handler@0.3.0"));
        assert!(!is_provided_import("evil:backdoor/shell"));
    }
}
