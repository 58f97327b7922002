use conformance::*;

#[tokio::test]
async fn base_endpoint_answers_with_api_version() {
    let s = TestServer::start().await;
    let r = client().get(s.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
}

#[tokio::test]
async fn pushed_image_pulls_back() {
    let s = TestServer::start().await;
    let c = client();
    let (d, m) = push_image(&c, &s, "smoke/img", "v1", 1, 2).await;
    let r = c
        .get(s.url("/v2/smoke/img/manifests/v1"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"].to_str().unwrap(), d);
    assert_eq!(r.text().await.unwrap(), m);
}
