//! The benchmarks use the same plugins as the tests, built the same way.

#[path = "../tests/build.rs"]
mod plugins;

fn main() {
    plugins::main();
}
