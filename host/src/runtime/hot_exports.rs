//! The hottest channel exports (`send`, `handle-webhook`), called without re-checking
//! their types on every call.
//!
//! Why: the generated `MessagingChannelPre::instantiate_async` looks up and type-checks
//! every export of the world (seven functions, each a walk over the WIT types of its
//! parameters and results) on every instantiation, although a call uses one. Profiled on
//! the `inbound` benchmark that was 4.7% of the async workers' samples, 2.4% on
//! `campaign`. Here the export's index is resolved once when the plugin is loaded, its
//! type is checked against the host's on the first call of the loaded plugin (a
//! mismatch is an error then, as before), and later calls of the same component skip
//! the check: a component's export types cannot change between its instances.

#![allow(unsafe_code)] // TypedFunc::new_unchecked, after the type was checked once

use std::sync::atomic::{AtomicBool, Ordering};

use wasmtime::AsContextMut;
use wasmtime::component::{
    ComponentExportIndex, ComponentNamedList, Func, Instance, Lift, Lower, TypedFunc,
};

/// One export resolved by index, type-checked once per loaded component.
#[derive(Debug)]
pub(crate) struct HotExport {
    index: ComponentExportIndex,
    checked: AtomicBool,
}

impl HotExport {
    /// Resolves `interface`'s function `name` in the pre-instantiated component.
    pub(crate) fn resolve<T: 'static>(
        pre: &wasmtime::component::InstancePre<T>,
        interface: &str,
        name: &str,
    ) -> wasmtime::Result<Self> {
        let component = pre.component();
        let interface_index = component
            .get_export_index(None, interface)
            .ok_or_else(|| wasmtime::format_err!("no exported instance named `{interface}`"))?;
        let index = component
            .get_export_index(Some(&interface_index), name)
            .ok_or_else(|| {
                wasmtime::format_err!("no function `{name}` exported by `{interface}`")
            })?;
        Ok(Self {
            index,
            checked: AtomicBool::new(false),
        })
    }

    /// The export of `instance` as a typed function: checked the first time, trusted
    /// after that.
    pub(crate) fn typed<Params, Results>(
        &self,
        mut store: impl AsContextMut,
        instance: &Instance,
    ) -> wasmtime::Result<TypedFunc<Params, Results>>
    where
        Params: ComponentNamedList + Lower,
        Results: ComponentNamedList + Lift,
    {
        let func: Func = instance
            .get_func(store.as_context_mut(), self.index)
            .ok_or_else(|| wasmtime::format_err!("the export is not a function"))?;
        if self.checked.load(Ordering::Acquire) {
            // SAFETY: `func.typed::<Params, Results>` succeeded before for an instance of
            // the same component (`index` belongs to it), and every instance of a
            // component exports functions of the same types; callers use one
            // `Params`/`Results` pair per `HotExport`.
            return Ok(unsafe { TypedFunc::new_unchecked(func) });
        }
        let typed = func.typed::<Params, Results>(store)?;
        self.checked.store(true, Ordering::Release);
        Ok(typed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::HotExport;
    use crate::ids::{InstallId, TenantId};
    use crate::runtime::abi::channel_types::{ChannelError, OutboundMessage, SendReceipt};
    use crate::runtime::{
        CHANNEL_INTERFACE, CallContext, PluginPre, Runtime, RuntimeConfig, World,
    };

    /// The bundled echo channel, loaded by a runtime without storage.
    fn echo() -> anyhow::Result<(Runtime, crate::runtime::LoadedPlugin)> {
        let bundled = crate::first_party::BUNDLED
            .iter()
            .find(|bundled| bundled.manifest.contains("echo-channel"))
            .ok_or_else(|| anyhow::anyhow!("echo-channel is bundled"))?;
        let runtime = Runtime::new(RuntimeConfig::default(), None)?;
        let plugin = runtime.load_as(bundled.component, World::MessagingChannel)?;
        Ok((runtime, plugin))
    }

    #[tokio::test]
    async fn an_export_is_type_checked_on_first_use_and_a_mismatch_is_refused() -> anyhow::Result<()>
    {
        let (runtime, plugin) = echo()?;
        let PluginPre::MessagingChannel(pre) = &plugin.pre else {
            anyhow::bail!("not a messaging channel");
        };
        let pre = pre.instance_pre();
        assert!(HotExport::resolve(pre, CHANNEL_INTERFACE, "no-such-export").is_err());
        assert!(HotExport::resolve(pre, "postdog:plugin/nothing@0.1.0", "send").is_err());

        let ctx = Arc::new(CallContext::new(
            TenantId::new("t1"),
            InstallId::new("i1"),
            "test",
        ));
        let mut store = runtime.new_store(&ctx, runtime.limits_for(&ctx));
        let instance = pre.instantiate_async(&mut store).await?;
        let send = HotExport::resolve(pre, CHANNEL_INTERFACE, "send")?;

        // Types other than the export's are refused, and do not mark it checked.
        let wrong = send.typed::<(u32,), (u32,)>(&mut store, &instance);
        assert!(wrong.is_err(), "a mismatched signature must be refused");
        assert!(!send.checked.load(Ordering::Acquire));

        // The export's own types pass and are trusted from then on.
        send.typed::<(&OutboundMessage,), (Result<SendReceipt, ChannelError>,)>(
            &mut store, &instance,
        )?;
        assert!(send.checked.load(Ordering::Acquire));
        send.typed::<(&OutboundMessage,), (Result<SendReceipt, ChannelError>,)>(
            &mut store, &instance,
        )?;
        Ok(())
    }
}
