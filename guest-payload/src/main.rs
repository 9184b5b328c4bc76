fn main() {
    eprintln!("kstorm-payload: skeleton");
}
