//! The bundled Octomil Edge cloud: control-plane API, revocation publisher and operator CLI.

pub mod cli;
