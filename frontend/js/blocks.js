// Repeated blocks of a model, read from its layer names alone: `transformer.h.3.attn.c_attn.weight`
// is block 3, role `attn.c_attn`, of the stack `transformer.h`. The layer overview draws a model
// with repeated blocks as a grid (a row per block, a column per role); pure functions, so they
// are tested in node (tests/browser/test_transformers_view.py).
//
// A block index is the first all-digit part of a name that has a part after it (the role: the
// rest, without a trailing `.weight`). A ResNet's stage is written in the part before it
// (`layer2.1.conv1`): that stage joins the index (block `2.1`) and the stack is `layer`, so the
// stages form one grid. Names without such a part (a stem conv, `lm_head`, the `0.weight` of an
// nn.Sequential MLP, whose "role" would be empty) are outside any block.

const DIGITS = /^\d+$/;
const STAGE = /^(.*\D)(\d+)$/; // "layer2": stem "layer", stage "2"

// {stack, block, role, pattern} of one layer name, or null when it is in no block.
export function splitName(name) {
  const parts = String(name).replace(/\.weight$/, "").split(".");
  const at = parts.findIndex((part, i) => DIGITS.test(part) && i < parts.length - 1);
  if (at < 0) return null;
  let prefix = parts.slice(0, at);
  let block = parts[at];
  let pattern = [...prefix, "N"].join(".");
  const stage = prefix.length ? STAGE.exec(prefix[prefix.length - 1]) : null;
  if (stage) {
    prefix = [...prefix.slice(0, -1), stage[1]];
    block = `${stage[2]}.${block}`;
    pattern = [...prefix.slice(0, -1), `${stage[1]}S.N`].join(".");
  }
  return { stack: prefix.join("."), block, role: parts.slice(at + 1).join("."), pattern };
}

// Block labels in reading order: "2.10" after "2.9", "10" after "9".
export function compareBlocks(a, b) {
  const x = a.split(".").map(Number);
  const y = b.split(".").map(Number);
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    const difference = (x[i] ?? -1) - (y[i] ?? -1);
    if (difference) return difference;
  }
  return 0;
}

// names: the layers' names, by layer index. Returns null when the model has no repeated blocks
// (no stack of two or more blocks sharing a role), else
// { stack, pattern, blocks: [label], roles: [role], cells: [{block, role, index, name}],
//   rest: [{index, name}] }: cells in layer order, the roles in the order they first appear,
// every layer outside the grid (another stack's too) in `rest`.
export function groupBlocks(names) {
  const stacks = new Map();
  names.forEach((name, index) => {
    const split = splitName(name);
    if (!split) return;
    if (!stacks.has(split.stack)) stacks.set(split.stack, { pattern: split.pattern, cells: [] });
    stacks.get(split.stack).cells.push({ block: split.block, role: split.role, index, name });
  });
  let chosen = null;
  for (const [stack, entry] of stacks) {
    const blocksOf = new Map(); // role → the blocks that have it
    for (const cell of entry.cells) {
      if (!blocksOf.has(cell.role)) blocksOf.set(cell.role, new Set());
      blocksOf.get(cell.role).add(cell.block);
    }
    const repeated = [...blocksOf.values()].some((blocks) => blocks.size >= 2);
    if (repeated && (!chosen || entry.cells.length > chosen.cells.length)) chosen = { stack, ...entry };
  }
  if (!chosen) return null;
  const inGrid = new Set(chosen.cells.map((cell) => cell.index));
  const roles = [];
  for (const cell of chosen.cells) if (!roles.includes(cell.role)) roles.push(cell.role);
  const blocks = [...new Set(chosen.cells.map((cell) => cell.block))].sort(compareBlocks);
  return {
    stack: chosen.stack, pattern: chosen.pattern, blocks, roles, cells: chosen.cells,
    rest: names.map((name, index) => ({ index, name })).filter((layer) => !inGrid.has(layer.index)),
  };
}
