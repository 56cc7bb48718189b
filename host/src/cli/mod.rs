pub async fn main() {}
