//! `postdog-registry`: the plugin registry — manifests (`postdog-plugin.toml`), signed
//! content-addressed artifacts, semver resolution and the artifact store, as a library and
//! as the HTTP service behind `postdog registry serve`.
//!
//! Not built yet: it arrives with the registry milestone (issue 5). Until then the host
//! loads components directly through `postdog_host::runtime::Runtime::load`.
