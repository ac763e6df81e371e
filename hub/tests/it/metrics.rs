//! `/metrics` on every HTTP service (and on the gRPC port): request counts
//! and latencies by route and status, plus what each service adds.

use hub_testkit::{Service, TestHub};

async fn scrape(hub: &TestHub, service: Service) -> String {
    let resp = reqwest::get(format!("{}/metrics", hub.url(service)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{service}");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{service}"
    );
    resp.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_counts_its_requests_by_route_and_status() {
    let hub = TestHub::all().await;
    let http = reqwest::Client::new();
    let rest = hub.url(Service::RestAuth);
    for _ in 0..2 {
        http.post(format!("{rest}/login"))
            .json(&serde_json::json!({"username": "nobody", "password": "wrong password"}))
            .send()
            .await
            .unwrap();
    }
    http.get(format!("{rest}/no/such/route"))
        .send()
        .await
        .unwrap();
    let user = uuid::Uuid::now_v7();
    http.get(format!(
        "{}/api/sessions/{user}",
        hub.url(Service::Sessions)
    ))
    .send()
    .await
    .unwrap();
    let channel = tonic::transport::Channel::from_shared(hub.url(Service::GrpcImages))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let _ = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await;
    // Refused before any message: the status travels in the headers.
    let refused = hub_grpc_images::pb::image_delivery_client::ImageDeliveryClient::new(channel)
        .list_images(hub_grpc_images::pb::ListImagesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let metrics = scrape(&hub, Service::RestAuth).await;
    assert!(
        metrics.contains(
            r#"polyhub_http_requests_total{service="rest-auth",method="POST",route="/login",status="401"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"route="unmatched",status="404"} 1"#),
        "unrouted requests are counted without their path: {metrics}"
    );
    assert!(metrics.contains(
        r#"polyhub_http_request_duration_seconds_count{service="rest-auth",method="POST",route="/login"} 2"#
    ));
    assert!(metrics.contains("polyhub_hashing_capacity "), "{metrics}");
    assert!(
        metrics.contains("polyhub_log_lines_dropped_total 0"),
        "nothing dropped by a quiet hub: {metrics}"
    );
    assert!(
        metrics.contains("polyhub_directory_cache_capacity 100000"),
        "{metrics}"
    );

    let metrics = scrape(&hub, Service::Sessions).await;
    assert!(
        metrics.contains(r#"route="/api/sessions/{user_id}",status="401"} 1"#),
        "routes are labelled by their pattern, not the user id: {metrics}"
    );
    assert!(!metrics.contains(&user.to_string()));
    assert!(metrics.contains("polyhub_outbox_backlog "), "{metrics}");
    assert!(
        metrics.contains("polyhub_relay_delivered_total "),
        "{metrics}"
    );

    let metrics = scrape(&hub, Service::GrpcImages).await;
    // gRPC calls by method and status code (in trailers, after HTTP 200).
    assert!(
        metrics.contains(
            r#"polyhub_grpc_requests_total{service="grpc-images",method="/grpc.health.v1.Health/Check",code="OK"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"polyhub_grpc_requests_total{service="grpc-images",method="/polyhub.images.v1.ImageDelivery/ListImages",code="UNAUTHENTICATED"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"polyhub_grpc_request_duration_seconds_count{service="grpc-images",method="/grpc.health.v1.Health/Check"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"route="/grpc.health.v1.Health/Check""#),
        "gRPC calls are not counted as HTTP requests too: {metrics}"
    );
    for service in [
        Service::SoapRegister,
        Service::SoapLookup,
        Service::SessionTracker,
    ] {
        let metrics = scrape(&hub, service).await;
        assert!(
            metrics.contains("# TYPE polyhub_http_requests_total counter"),
            "{service}: {metrics}"
        );
    }
    hub.stop().await;
}

/// gRPC method labels come from the methods the port implements: 1,000
/// made-up methods, under the real service and under none, are one
/// `other` series, with or without credentials.
#[tokio::test(flavor = "multi_thread")]
async fn made_up_grpc_methods_make_no_new_series() {
    use tonic::codegen::http::uri::PathAndQuery;
    let hub = TestHub::with(&[Service::GrpcImages]).await;
    let channel = tonic::transport::Channel::from_shared(hub.url(Service::GrpcImages))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for i in 0..1_000 {
        let path = if i % 2 == 0 {
            format!("/polyhub.images.v1.ImageDelivery/MadeUp{i}")
        } else {
            format!("/made.up.Service{i}/Call")
        };
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let answer: Result<tonic::Response<hub_grpc_images::pb::ListImagesResponse>, _> = grpc
            .unary(
                tonic::Request::new(hub_grpc_images::pb::ListImagesRequest::default()),
                PathAndQuery::try_from(path).unwrap(),
                tonic_prost::ProstCodec::default(),
            )
            .await;
        assert!(answer.is_err(), "a made-up method answered");
    }
    let metrics = scrape(&hub, Service::GrpcImages).await;
    let methods: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("polyhub_grpc_requests_total{"))
        .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(
        methods.into_iter().collect::<Vec<_>>(),
        ["other"],
        "{metrics}"
    );
    let http_series = metrics
        .lines()
        .filter(|l| l.starts_with("polyhub_http_requests_total{"))
        .count();
    assert!(http_series <= 2, "{metrics}");
    hub.stop().await;
}
