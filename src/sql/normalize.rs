pub fn normalize(sql: &[u8], max_len: usize) -> String {
    String::from_utf8_lossy(&sql[..sql.len().min(max_len)]).into_owned()
}
