fn main() {
    eprintln!("kiln: not built yet");
    std::process::exit(2);
}
