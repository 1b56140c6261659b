// Reads one array served by `refstore serve` with zarrita.js and compares it with the values
// Python expects. Usage: node read_array.mjs <dataset URL> <array path> <2|3> <expected.json>
// expected.json: {"shape": [...], "dtype": "...", "values": [flat, C order]}. Exit 0 when equal.
import { readFileSync } from "node:fs";
import * as zarr from "zarrita";

const [url, path, format, expectedFile] = process.argv.slice(2);
const expected = JSON.parse(readFileSync(expectedFile, "utf8"));
const location = zarr.root(new zarr.FetchStore(url)).resolve(path);
const array = format === "2"
  ? await zarr.open.v2(location, { kind: "array" })
  : await zarr.open.v3(location, { kind: "array" });
const view = await zarr.get(array, null);
const got = Array.from(view.data, Number);
const problems = [];
if (JSON.stringify(view.shape) !== JSON.stringify(expected.shape)) {
  problems.push(`shape ${JSON.stringify(view.shape)} != ${JSON.stringify(expected.shape)}`);
}
if (array.dtype !== expected.dtype) problems.push(`dtype ${array.dtype} != ${expected.dtype}`);
let wrong = 0;
for (let i = 0; i < expected.values.length; i++) {
  const a = got[i], b = expected.values[i];
  if (!(a === b || (Number.isNaN(a) && b === null))) {
    if (wrong < 5) problems.push(`value ${i}: ${a} != ${b}`);
    wrong++;
  }
}
if (got.length !== expected.values.length) problems.push(`${got.length} values != ${expected.values.length}`);
console.log(JSON.stringify({ ok: problems.length === 0, wrong, problems, codecs: array.codecs?.map?.((c) => c.kind) }));
process.exit(problems.length === 0 ? 0 : 1);
