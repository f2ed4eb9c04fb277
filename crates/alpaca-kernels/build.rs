//! With the `onednn` feature: compiles the small C++ bridge to oneDNN's matmul
//! (csrc/onednn_matmul.cpp) and links Debian's libdnnl and its OpenMP runtime.

fn main() {
    #[cfg(feature = "onednn")]
    {
        println!("cargo:rerun-if-changed=csrc/onednn_matmul.cpp");
        cc::Build::new()
            .cpp(true)
            .std("c++17")
            .flag("-fopenmp")
            .file("csrc/onednn_matmul.cpp")
            .compile("alpaca_onednn");
        println!("cargo:rustc-link-lib=dnnl");
        println!("cargo:rustc-link-lib=gomp");
    }
}
