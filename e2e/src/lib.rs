//! polyhub end to end. The tests in `tests/` start `hub serve` as a real
//! process and drive it only from outside, through the clients each
//! protocol's users would use: zeep for SOAP, plain HTTP for REST and the
//! legacy GET, grpcio for images. Nothing here links the hub's crates.
