fn main() {
    print!("{}", rag_operator::crd::yaml());
}
