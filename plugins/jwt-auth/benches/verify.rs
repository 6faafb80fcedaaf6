// placeholder until the bench lands (keeps the workspace manifest valid)
fn main() {}
