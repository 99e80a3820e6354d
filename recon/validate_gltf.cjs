// Validate one .glb with the Khronos glTF-Validator; prints its JSON report on stdout.
const fs = require("fs");
const validator = require("gltf-validator");

const path = process.argv[2];
validator
  .validateBytes(new Uint8Array(fs.readFileSync(path)), { uri: path, maxIssues: 100 })
  .then((report) => process.stdout.write(JSON.stringify(report)))
  .catch((error) => {
    process.stderr.write(String(error));
    process.exit(1);
  });
