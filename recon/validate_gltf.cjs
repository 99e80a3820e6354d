// Validate one .glb with the Khronos glTF-Validator; prints its JSON report on stdout.
const fs = require("fs");
let validator;
try {
  validator = require("gltf-validator");
} catch (error) {
  // exit status 3: the validator is not installed (as opposed to failing on this file)
  process.stderr.write(String(error));
  process.exit(3);
}

const path = process.argv[2];
validator
  .validateBytes(new Uint8Array(fs.readFileSync(path)), { uri: path, maxIssues: 100 })
  .then((report) => process.stdout.write(JSON.stringify(report)))
  .catch((error) => {
    process.stderr.write(String(error));
    process.exit(1);
  });
