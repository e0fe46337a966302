//! Writes the demo's two images, `edge/app:v1` and `edge/app:v2`, as OCI layouts under the
//! directory given (default `demo-output/images`): `app-v1` (tag v1) and `app-v2` (tag v2).

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "demo-output/images".to_owned());
    match sideload_bundle::demo::make_demo_images(std::path::Path::new(&out)) {
        Ok(images) => {
            println!(
                "{}  edge/app:v1  manifest {}",
                images.v1.display(),
                images.v1_manifest
            );
            println!(
                "{}  edge/app:v2  manifest {}",
                images.v2.display(),
                images.v2_manifest
            );
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
