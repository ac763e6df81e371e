//! grpc-images under load, against `hub serve` running as its own process
//! (so its memory can be read), each figure beside its baseline measured in
//! the same run.
//!
//!     scripts/bench images        (sets up PostgreSQL, MongoDB and S3, then runs this)
//!
//! 1. Upload throughput in MB/s with sanitizing on, for 1 MiB and 8 MiB
//!    PNGs (noise, so they do not compress), 4 clients at once, vs direct
//!    PUTs of the same bytes to the same S3 server from 4 tasks; two
//!    rounds, with the CPU each process spent per upload. Each side first
//!    sends four images untimed over the client it is timed with.
//! 2. Peak RSS of the hub while 16 clients upload 8 MiB images at once,
//!    against the budget 16 x 3 x 8 MiB + 50 MiB.
//! 3. Sanitizing time per megapixel: noise in each format, then each
//!    format's hardest inputs against PNG's.
//!
//! Every upload is a distinct image: the same image twice is stored once, so
//! repeats would measure the shortcut.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::Cursor;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hub_grpc_images::pb::image_delivery_client::ImageDeliveryClient;
use hub_grpc_images::pb::upload_image_request::Data;
use hub_grpc_images::pb::{UploadImageRequest, UploadMetadata};
use hub_testkit::{Service, TestSetup, free_port};
use image::{DynamicImage, RgbImage};
use tonic::transport::Channel;

const MIB: usize = 1024 * 1024;

/// A noise PNG of about `bytes` bytes; `seed` makes it distinct.
fn noise_png(bytes: usize, seed: u64) -> Vec<u8> {
    let side = ((bytes / 3) as f64).sqrt() as u32;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let image = RgbImage::from_fn(side, side, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        image::Rgb([state as u8, (state >> 8) as u8, (state >> 16) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(image)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

struct Served {
    child: Child,
    rest: String,
    grpc: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Busy and total jiffies of every CPU since boot, from /proc/stat.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap())
        .collect();
    // user nice system idle iowait irq softirq steal
    let idle = fields[3] + fields[4];
    let total: u64 = fields.iter().take(8).sum();
    (total - idle, total)
}

/// CPU seconds used so far by every process whose command name starts
/// with one of `names` (the hub, s3s-fs, PostgreSQL's backends, this one).
fn cpu_by_process(names: &[&str]) -> Vec<f64> {
    let mut totals = vec![0.0; names.len()];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        if let Some(i) = names.iter().position(|n| comm.starts_with(n)) {
            totals[i] += ticks / 100.0;
        }
    }
    totals
}

const PROCESSES: [&str; 4] = ["hub", "s3s-fs", "postgres", "images-"];

/// How busy the machine's CPUs were while `work` ran, 0 to 1.
async fn busy_while<T>(work: impl std::future::Future<Output = T>) -> (T, f64) {
    let (busy0, total0) = cpu_jiffies();
    let out = work.await;
    let (busy1, total1) = cpu_jiffies();
    (
        out,
        (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64,
    )
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

/// `hub migrate`, then `hub serve` on free ports against the test stores.
fn serve() -> Served {
    let setup = TestSetup::new(&[Service::RestAuth, Service::GrpcImages]);
    let (config, keys) = (&setup.config, &setup.keys);
    let hub = env!("CARGO_BIN_EXE_hub");
    let s3 = &config.images.s3;
    let (rest_port, grpc_port) = (free_port(), free_port());
    let env = |cmd: &mut Command| {
        cmd.env("POLYHUB_DATABASE__URL", config.database.url.expose())
            .env("POLYHUB_MONGO__URL", config.mongo.url.expose())
            .env("POLYHUB_MONGO__DATABASE", &config.mongo.database)
            .env("POLYHUB_IMAGES__S3__ENDPOINT", s3.endpoint.clone().unwrap())
            .env("POLYHUB_IMAGES__S3__BUCKET", &s3.bucket)
            .env("POLYHUB_IMAGES__S3__ACCESS_KEY", &s3.access_key)
            .env("POLYHUB_IMAGES__S3__SECRET_KEY", s3.secret_key.expose())
            .env("POLYHUB_TOKENS__SIGNING_KEY_PATH", &keys.private)
            .env("POLYHUB_SERVICES__REST_AUTH__PORT", rest_port.to_string())
            .env("POLYHUB_SERVICES__GRPC_IMAGES__PORT", grpc_port.to_string())
            .env("POLYHUB_LOG__LEVEL", "warn")
            // One user makes every upload here, 16 at once in the memory
            // run: the per-user cap on uploads in progress is widened.
            .env("POLYHUB_IMAGES__MAX_UPLOADS_PER_USER", "16");
    };
    let mut migrate = Command::new(hub);
    env(&mut migrate);
    assert!(migrate.arg("migrate").status().unwrap().success());
    let mut cmd = Command::new(hub);
    env(&mut cmd);
    let child = cmd
        .args(["serve", "--only", "rest-auth,grpc-images"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", grpc_port)).is_err() {
        assert!(Instant::now() < deadline, "hub serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Served {
        child,
        rest: format!("http://127.0.0.1:{rest_port}"),
        grpc: format!("http://127.0.0.1:{grpc_port}"),
    }
}

async fn upload(mut client: ImageDeliveryClient<Channel>, token: &str, bytes: Arc<Vec<u8>>) {
    let mut messages = vec![UploadImageRequest {
        data: Some(Data::Metadata(UploadMetadata {
            filename: "bench.png".into(),
            content_type: "image/png".into(),
        })),
    }];
    messages.extend(bytes.chunks(MIB).map(|c| UploadImageRequest {
        data: Some(Data::Chunk(bytes::Bytes::copy_from_slice(c))),
    }));
    let mut request = tonic::Request::new(futures_util::stream::iter(messages));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    client.upload_image(request).await.unwrap();
}

/// One HTTP/2 connection to the hub (as the direct PUTs share one client),
/// after the `warmup` images went through it untimed, all at once: the
/// timed pass then measures neither opening connections (the hub's to the
/// store and PostgreSQL included), nor preparing statements, nor the
/// hub's first buffers.
async fn hub_client(
    grpc: &str,
    token: &str,
    warmup: &[Arc<Vec<u8>>],
) -> ImageDeliveryClient<Channel> {
    let client = ImageDeliveryClient::connect(grpc.to_owned())
        .await
        .unwrap()
        .max_encoding_message_size(8 * MIB);
    futures_util::future::join_all(
        warmup
            .iter()
            .map(|image| upload(client.clone(), token, Arc::clone(image))),
    )
    .await;
    client
}

/// MB/s for uploading every image through the hub, `clients` at a time.
async fn through_hub(
    client: &ImageDeliveryClient<Channel>,
    token: &str,
    images: &[Arc<Vec<u8>>],
    clients: usize,
) -> f64 {
    let total: usize = images.iter().map(|i| i.len()).sum();
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(clients));
    let tasks: Vec<_> = images
        .iter()
        .map(|image| {
            let (client, token, image) = (client.clone(), token.to_owned(), Arc::clone(image));
            let semaphore = Arc::clone(&semaphore);
            tokio::spawn(async move {
                let _slot = semaphore.acquire().await.unwrap();
                upload(client, &token, image).await;
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    total as f64 / 1e6 / started.elapsed().as_secs_f64()
}

/// A client of the same store, as the hub configures its own, after the
/// `warmup` images were PUT through it untimed, all at once.
async fn store_client(warmup: &[Arc<Vec<u8>>]) -> Arc<hub_store::S3ObjectStore> {
    let s3 = hub_testkit::s3_config();
    let settings = hub_store::S3Settings {
        endpoint: s3.endpoint.clone(),
        region: s3.region.clone(),
        bucket: s3.bucket.clone(),
        access_key: s3.access_key.clone(),
        secret_key: s3.secret_key.expose().as_str().into(),
        timeout: Duration::from_secs(30),
    };
    let store = Arc::new(hub_store::S3ObjectStore::new(&settings));
    store.ensure_bucket().await.unwrap();
    let puts = warmup.iter().enumerate().map(|(i, image)| {
        let (store, bytes) = (Arc::clone(&store), bytes::Bytes::from(image.to_vec()));
        async move {
            let key = format!("direct/warmup-{i}.png");
            hub_core::ObjectStore::put(&*store, &key, bytes, "image/png", None)
                .await
                .unwrap();
        }
    });
    futures_util::future::join_all(puts).await;
    store
}

/// MB/s for PUTting the same bytes straight into the same store.
async fn direct_puts(
    store: &Arc<hub_store::S3ObjectStore>,
    images: &[Arc<Vec<u8>>],
    clients: usize,
) -> f64 {
    let total: usize = images.iter().map(|i| i.len()).sum();
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(clients));
    let tasks: Vec<_> = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let (store, image, semaphore) =
                (Arc::clone(store), Arc::clone(image), Arc::clone(&semaphore));
            tokio::spawn(async move {
                let _slot = semaphore.acquire().await.unwrap();
                hub_core::ObjectStore::put(
                    &*store,
                    &format!("direct/{i}.png"),
                    bytes::Bytes::from(image.to_vec()),
                    "image/png",
                    // A plain client: the SDK hashes the payload to sign it.
                    None,
                )
                .await
                .unwrap();
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    total as f64 / 1e6 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let served = serve();
    let login = hub_testkit::sign_up(&served.rest, "bench", "correct horse battery").await;
    let token = login["token"].as_str().unwrap().to_owned();
    let mut seed = 0;
    let mut images = |size: usize, count: usize| -> Vec<Arc<Vec<u8>>> {
        (0..count)
            .map(|_| {
                seed += 1;
                Arc::new(noise_png(size, seed))
            })
            .collect()
    };
    // Two rounds, hub then direct each time: one pass of a few hundred
    // milliseconds moves with whatever else the two cores are doing.
    let sizes = [("1 MiB", MIB, 64), ("8 MiB", 8 * MIB, 16)];
    for (label, size, count) in sizes.into_iter().chain(sizes) {
        let for_hub = images(size, count);
        let for_store = images(size, count);
        // Four untimed uploads (and PUTs) first, one per client.
        let warmup = images(size, 4);
        let client = hub_client(&served.grpc, &token, &warmup).await;
        let store = store_client(&warmup).await;
        let before = cpu_by_process(&PROCESSES);
        let (hub_rate, hub_busy) = busy_while(through_hub(&client, &token, &for_hub, 4)).await;
        let middle = cpu_by_process(&PROCESSES);
        let (direct_rate, direct_busy) = busy_while(direct_puts(&store, &for_store, 4)).await;
        let after = cpu_by_process(&PROCESSES);
        let per_upload = |from: &[f64], to: &[f64]| -> String {
            PROCESSES
                .iter()
                .zip(from.iter().zip(to))
                .map(|(name, (a, b))| format!("{name} {:.2}", (b - a) * 1000.0 / count as f64))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "  CPU ms per {label} upload: through the hub: {}; direct: {}",
            per_upload(&before, &middle),
            per_upload(&middle, &after)
        );
        println!(
            "| upload {label} PNGs, 4 clients ({count} distinct images, {:.1} MB each) | {hub_rate:.1} MB/s (CPUs {:.0}% busy) | direct PUT of the same bytes {direct_rate:.1} MB/s (CPUs {:.0}% busy) | ratio {:.2} |",
            for_hub[0].len() as f64 / 1e6,
            hub_busy * 100.0,
            direct_busy * 100.0,
            hub_rate / direct_rate
        );
    }
    let before = peak_rss_mib(served.child.id());
    let burst = images(8 * MIB, 16);
    let client = hub_client(&served.grpc, &token, &[]).await;
    through_hub(&client, &token, &burst, 16).await;
    let peak = peak_rss_mib(served.child.id());
    let budget = 16.0 * 3.0 * 8.0 + 50.0;
    println!(
        "| peak RSS of hub serve, 16 clients uploading 8 MiB at once | {peak:.0} MiB (before the burst {before:.0} MiB) | budget 16 x 3 x 8 MiB + 50 MiB = {budget:.0} MiB | {:.2} of budget |",
        peak / budget
    );
    sanitizing_per_megapixel();
    worst_case_per_megapixel();
}

/// Noise at `width` x `height`, in each accepted format, as its default
/// encoder writes it. For PNG that is its cheapest case (the encoder gives
/// up on compressing and stores the rows); see `hardest_inputs`.
fn noise_in(format: image::ImageFormat, width: u32, height: u32) -> Vec<u8> {
    let mut seed = 0x9e37_79b9_u32;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed as u8
    };
    if format == image::ImageFormat::Gif {
        // Indexed noise through the gif crate: the image crate's encoder
        // would quantize for seconds first.
        let palette: Vec<u8> = (0..=255u8)
            .flat_map(|i| [i, i.wrapping_mul(7), i.wrapping_mul(13)])
            .collect();
        let pixels: Vec<u8> = (0..width * height).map(|_| next()).collect();
        let mut out = Vec::new();
        let mut encoder =
            gif::Encoder::new(&mut out, width as u16, height as u16, &palette).unwrap();
        encoder
            .write_frame(&gif::Frame::from_indexed_pixels(
                width as u16,
                height as u16,
                pixels,
                None,
            ))
            .unwrap();
        drop(encoder);
        return out;
    }
    let pixels: Vec<u8> = (0..width * height * 3).map(|_| next()).collect();
    let image = DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, pixels).unwrap());
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// hub-core's sanitizing of noise in each format, best of three, per
/// megapixel and against PNG's.
fn sanitizing_per_megapixel() {
    let (width, height) = (2_000u32, 2_000u32);
    let megapixels = f64::from(width * height) / 1e6;
    let limits = hub_core::ImageLimits {
        max_bytes: 64 * MIB,
        max_pixels: 50_000_000,
    };
    println!("\nsanitizing noise, {width} x {height}, each format's default encoding, best of 3:");
    println!("| format | upload | ms per megapixel | against PNG |");
    println!("|---|---|---|---|");
    let mut png = None;
    for format in [
        image::ImageFormat::Png,
        image::ImageFormat::Jpeg,
        image::ImageFormat::Gif,
        image::ImageFormat::WebP,
    ] {
        let bytes = noise_in(format, width, height);
        let best = (0..3)
            .map(|_| {
                let upload = bytes.clone();
                let started = Instant::now();
                hub_core::upload::sanitize(upload, &limits).unwrap();
                started.elapsed()
            })
            .min()
            .unwrap();
        let per_mp = best.as_secs_f64() * 1000.0 / megapixels;
        let png_per_mp = *png.get_or_insert(per_mp);
        println!(
            "| {format:?} | {:.1} MB | {per_mp:.2} | {:.2} |",
            bytes.len() as f64 / 1e6,
            per_mp / png_per_mp
        );
    }
}

/// Milliseconds per megapixel to sanitize `bytes`, best of three.
fn ms_per_megapixel(bytes: &[u8], megapixels: f64) -> f64 {
    let limits = hub_core::ImageLimits {
        max_bytes: 64 * MIB,
        max_pixels: 50_000_000,
    };
    (0..3)
        .map(|_| {
            let upload = bytes.to_vec();
            let started = Instant::now();
            hub_core::upload::sanitize(upload, &limits).unwrap();
            started.elapsed().as_secs_f64() * 1000.0 / megapixels
        })
        .fold(f64::MAX, f64::min)
}

/// The inputs that cost each format the most per megapixel, found by
/// trying what each decoder finds hardest: for PNG, samples of 16 bits
/// with alpha (8 bytes a pixel), stored and Huffman-coded, and 8-bit rows
/// that deflate really compresses (inflating is work, not a copy; of the
/// inputs tried, 16-bit samples of 256 levels cost PNG the most); for JPEG, quality
/// 100 (the most entropy-coded data per block); GIF and WebP as above.
fn hardest_inputs(width: u32, height: u32) -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut seed = 0x2545_f491_u32;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed as u8
    };
    let pixels = (width * height) as usize;
    let encode = |image: DynamicImage, format| {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    };
    let rgba16: Vec<u16> = (0..pixels * 4)
        .map(|_| u16::from_be_bytes([next(), next()]))
        .collect();
    // 16-bit samples of 256 levels: every sample's high byte is zero, so
    // deflate Huffman-codes the rows and inflating 8 bytes a pixel is work.
    let rgba16_coded: Vec<u16> = (0..pixels * 4).map(|_| u16::from(next())).collect();
    let low_entropy: Vec<u8> = (0..pixels * 3).map(|_| next() & 0x0f).collect();
    let noise: Vec<u8> = (0..pixels * 3).map(|_| next()).collect();
    let mut q100 = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut q100, 100)
        .encode(&noise, width, height, image::ExtendedColorType::Rgb8)
        .unwrap();
    vec![
        (
            "PNG",
            "RGBA, 16 bits a sample, noise",
            encode(
                DynamicImage::ImageRgba16(
                    image::ImageBuffer::from_raw(width, height, rgba16).unwrap(),
                ),
                image::ImageFormat::Png,
            ),
        ),
        (
            "PNG",
            "RGBA, 16 bits a sample, 256 levels (Huffman-coded)",
            encode(
                DynamicImage::ImageRgba16(
                    image::ImageBuffer::from_raw(width, height, rgba16_coded).unwrap(),
                ),
                image::ImageFormat::Png,
            ),
        ),
        (
            "PNG",
            "RGB, 16 levels a sample (Huffman-coded)",
            encode(
                DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, low_entropy).unwrap()),
                image::ImageFormat::Png,
            ),
        ),
        ("JPEG", "quality 100, noise", q100),
        (
            "GIF",
            "256 colours, noise",
            noise_in(image::ImageFormat::Gif, width, height),
        ),
        (
            "WebP",
            "lossless, noise",
            noise_in(image::ImageFormat::WebP, width, height),
        ),
    ]
}

/// Each format's worst input per megapixel, against PNG's worst.
fn worst_case_per_megapixel() {
    let (width, height) = (2_000u32, 2_000u32);
    let megapixels = f64::from(width * height) / 1e6;
    println!("\nsanitizing each format's hardest inputs, {width} x {height}, best of 3:");
    println!("| format | input | upload | ms per megapixel |");
    println!("|---|---|---|---|");
    let mut worst: Vec<(&str, f64)> = Vec::new();
    for (format, input, bytes) in hardest_inputs(width, height) {
        let per_mp = ms_per_megapixel(&bytes, megapixels);
        println!(
            "| {format} | {input} | {:.1} MB | {per_mp:.2} |",
            bytes.len() as f64 / 1e6
        );
        match worst.iter_mut().find(|(f, _)| *f == format) {
            Some((_, w)) => *w = w.max(per_mp),
            None => worst.push((format, per_mp)),
        }
    }
    let png = worst[0].1;
    println!("\n| format | worst ms per megapixel | against PNG's worst |");
    println!("|---|---|---|");
    for (format, per_mp) in &worst {
        println!("| {format} | {per_mp:.2} | {:.2} |", per_mp / png);
    }
}
