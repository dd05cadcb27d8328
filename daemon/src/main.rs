//! `octomild`: the device-identity daemon. Registration, the credential store and the local
//! socket API arrive with issue 2/5; until then this binary only reports its version.

fn main() {
    println!("octomild {}", env!("CARGO_PKG_VERSION"));
}
