//! The low-level msgpack writers that the encoder ([`crate::codec`]) and the types that
//! write themselves (`WorkerSettings`, `UpdateItem`) share. A module of their own, so
//! those modules need not import each other. Writing to a `Vec` cannot fail.

use rmpv::Value;

pub(crate) fn w_map(buf: &mut Vec<u8>, n: usize) {
    rmp::encode::write_map_len(buf, n as u32).expect("Vec write");
}
pub(crate) fn w_array(buf: &mut Vec<u8>, n: usize) {
    rmp::encode::write_array_len(buf, n as u32).expect("Vec write");
}
pub(crate) fn w_str(buf: &mut Vec<u8>, s: &str) {
    rmp::encode::write_str(buf, s).expect("Vec write");
}
pub(crate) fn w_int(buf: &mut Vec<u8>, n: i64) {
    rmp::encode::write_sint(buf, n).expect("Vec write");
}
pub(crate) fn w_uint(buf: &mut Vec<u8>, n: u64) {
    rmp::encode::write_uint(buf, n).expect("Vec write");
}
pub(crate) fn w_f64(buf: &mut Vec<u8>, f: f64) {
    rmp::encode::write_f64(buf, f).expect("Vec write");
}
pub(crate) fn w_nil(buf: &mut Vec<u8>) {
    rmp::encode::write_nil(buf).expect("Vec write");
}
pub(crate) fn w_value(buf: &mut Vec<u8>, v: &Value) {
    rmpv::encode::write_value(buf, v).expect("Vec write");
}
