//! `cargo run -p kiln-config --release --example checkconfig -- [DIR|FILE]...`: loads each config,
//! prints its summary and load time, exits 1 on the first bad one.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = if args.is_empty() {
        vec![".".to_string()]
    } else {
        args
    };
    for a in args {
        let t = std::time::Instant::now();
        match kiln_config::check(&a) {
            Ok(s) => println!("{s} (loaded in {:.1} ms)", t.elapsed().as_secs_f64() * 1e3),
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    }
}
