//! Hostile test plugin: `run` tries to leave the sandbox through WASI — read host files,
//! list directories, read the environment and arguments, open a TCP connection to
//! `config.tcp` (an address) and resolve a host name — and reports what happened.
use postdog_sdk::prelude::*;

struct Escape;

fn outcome<T>(result: std::io::Result<T>, show: impl FnOnce(T) -> Value) -> Value {
    match result {
        Ok(value) => json!({ "ok": show(value) }),
        Err(error) => json!({ "error": error.to_string() }),
    }
}

impl Action for Escape {
    fn describe() -> Descriptor {
        Descriptor::new("Escape", "Tries to reach outside the sandbox")
    }

    fn run(input: ActionInput) -> Result<ActionResult, ActionError> {
        let tcp = input
            .config_str("tcp")
            .unwrap_or_else(|| "127.0.0.1:5432".into());
        let report = json!({
            "read_file": outcome(std::fs::read("/etc/passwd"), |bytes| json!(bytes.len())),
            "list_root": outcome(std::fs::read_dir("/"), |entries| json!(entries.count())),
            "list_cwd": outcome(std::fs::read_dir("."), |entries| json!(entries.count())),
            "write_file": outcome(std::fs::write("/tmp/postdog-escape", b"x"), |()| json!(null)),
            "env": std::env::vars().count(),
            "args": std::env::args().count(),
            "tcp": outcome(std::net::TcpStream::connect(tcp.as_str()), |_| json!("connected")),
            "dns": outcome(std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 80)), |addrs| json!(addrs.count())),
        });
        Ok(ActionResult::end().with_output(report))
    }
}

postdog_sdk::export_action!(Escape);
