//! The test build compiled every plugin of `plugins/` into a WebAssembly component.

use postdog_tests::plugin_bytes;

#[test]
fn every_plugin_is_a_component() {
    for name in [
        "hello_action",
        "echo_channel",
        "hostile_infinite_loop",
        "hostile_memory_hog",
        "hostile_deep_recursion",
        "hostile_big_return",
        "hostile_panic",
        "hostile_http_probe",
        "hostile_kv_probe",
        "hostile_bad_output",
        "hostile_escape",
    ] {
        let bytes = plugin_bytes(name);
        assert_eq!(
            &bytes[..8],
            b"\0asm\x0d\0\x01\0",
            "{name} is not a component"
        );
    }
}
