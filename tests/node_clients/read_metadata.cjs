// Reads a guest's metadata with the AWS SDK for JavaScript v3, as an application on EC2 would,
// and prints one JSON object. Run inside a guest namespace by tests/test_sdk_clients_through_tc.py
// with NODE_PATH pointing at the checkout's .node/node_modules (installed by scripts/setup).
//
// - @aws-sdk/ec2-metadata-service MetadataService: IMDSv2 (it PUTs /latest/api/token first),
//   IMDSv1 disabled so a missing token is an error; it sends `//latest/...` request targets.
// - @smithy/credential-provider-imds fromInstanceMetadata(): the role's credentials, with the
//   IMDSv1 fallback disabled (ec2MetadataV1Disabled).
"use strict";

const { MetadataService } = require("@aws-sdk/ec2-metadata-service");
const { fromInstanceMetadata } = require("@smithy/credential-provider-imds");

// One attempt, a bounded wait: a broken path fails the test instead of retrying for minutes.
const TIMEOUT_MS = 5000;
const PATHS = {
  "instance-id": "/latest/meta-data/instance-id",
  "local-ipv4": "/latest/meta-data/local-ipv4",
  mac: "/latest/meta-data/mac",
  "local-hostname": "/latest/meta-data/local-hostname",
  "availability-zone": "/latest/meta-data/placement/availability-zone",
  "user-data": "/latest/user-data",
  "meta-data-listing": "/latest/meta-data/",
  "version-listing": "/latest/",
};

async function main() {
  const service = new MetadataService({
    ec2MetadataV1Disabled: true,
    retries: 0,
    httpOptions: { timeout: TIMEOUT_MS },
  });
  const out = {};
  for (const [name, path] of Object.entries(PATHS)) {
    out[name] = await service.request(path, {});
  }
  const credentials = await fromInstanceMetadata({
    ec2MetadataV1Disabled: true,
    timeout: TIMEOUT_MS,
    maxRetries: 0,
  })();
  out.credentials = {
    accessKeyId: credentials.accessKeyId,
    secretAccessKey: credentials.secretAccessKey,
    sessionToken: credentials.sessionToken,
    expiration: credentials.expiration ? credentials.expiration.toISOString() : null,
  };
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((error) => {
  process.stderr.write(`${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
});
