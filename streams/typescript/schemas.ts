// Generated from handwriting_ai.contracts by `digits schemas`: never edit by hand.
// Regenerate with: ./dev run digits schemas   (zod 4; checked with typescript 5.9.3, zod 4.6.7)
import { z } from "zod";

import type * as T from "./types.js";

/** An integer as JSON Schema means one: a whole number of any size. (`z.int()` would refuse
 * ids past 2^53, which JSON.parse can only round; compare such ids as text if they matter.) */
const integer = () =>
  z.number().refine(Number.isInteger, { message: "Invalid input: expected an integer" });

export const TrainStartedSchema = z.object({
  type: z.literal("digits.train.started.v1"),
  request_id: z.string(),
  user_id: integer().min(0),
  model_id: z.string(),
  run_id: z.string().nullable().default(null),
  ts: z.string().regex(new RegExp("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?(Z|\\+00:00)$", "u")),
  total_epochs: integer().min(1),
  attempt: integer().min(1).default(1),
});

export const TrainBatchSchema = z.object({
  type: z.literal("digits.train.batch.v1"),
  request_id: z.string(),
  user_id: integer().min(0),
  model_id: z.string(),
  run_id: z.string().nullable().default(null),
  ts: z.string().regex(new RegExp("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?(Z|\\+00:00)$", "u")),
  epoch: integer().min(1),
  total_epochs: integer().min(1),
  batch: integer().min(1),
  total_batches: integer().min(1),
  batch_loss: z.number().min(0),
  batch_acc: z.number().min(0).max(1),
  avg_loss: z.number().min(0),
  samples_per_sec: z.number().min(0),
});

export const TrainEpochSchema = z.object({
  type: z.literal("digits.train.epoch.v1"),
  request_id: z.string(),
  user_id: integer().min(0),
  model_id: z.string(),
  run_id: z.string().nullable().default(null),
  ts: z.string().regex(new RegExp("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?(Z|\\+00:00)$", "u")),
  epoch: integer().min(1),
  total_epochs: integer().min(1),
  train_loss: z.number().min(0),
  val_acc: z.number().min(0).max(1),
  time_s: z.number().min(0),
});

export const TrainBestSchema = z.object({
  type: z.literal("digits.train.best.v1"),
  request_id: z.string(),
  user_id: integer().min(0),
  model_id: z.string(),
  run_id: z.string().nullable().default(null),
  ts: z.string().regex(new RegExp("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?(Z|\\+00:00)$", "u")),
  epoch: integer().min(1),
  val_acc: z.number().min(0).max(1),
});

export const TrainArtifactSchema = z.object({
  type: z.literal("digits.train.artifact.v1"),
  request_id: z.string(),
  user_id: integer().min(0),
  model_id: z.string(),
  run_id: z.string().nullable().default(null),
  ts: z.string().regex(new RegExp("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?(Z|\\+00:00)$", "u")),
  path: z.string(),
});

export const TrainUploadSchema = z.object({
  type: z.literal("digits.train.upload.v1"),
  request_id: z.string(),
  user_id: integer().min(0),
  model_id: z.string(),
  run_id: z.string().nullable().default(null),
  ts: z.string().regex(new RegExp("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?(Z|\\+00:00)$", "u")),
  status: integer().min(100).max(599),
  model_bytes: integer().min(0),
  manifest_bytes: integer().min(0),
});

export const TrainPruneSchema = z.object({
  type: z.literal("digits.train.prune.v1"),
  request_id: z.string(),
  user_id: integer().min(0),
  model_id: z.string(),
  run_id: z.string().nullable().default(null),
  ts: z.string().regex(new RegExp("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?(Z|\\+00:00)$", "u")),
  deleted_count: integer().min(0),
});

export const TrainCompletedSchema = z.object({
  type: z.literal("digits.train.completed.v1"),
  request_id: z.string(),
  user_id: integer().min(0),
  model_id: z.string(),
  run_id: z.string().nullable().default(null),
  ts: z.string().regex(new RegExp("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?(Z|\\+00:00)$", "u")),
  val_acc: z.number().min(0).max(1),
  test_acc: z.number().min(0).max(1).nullable().default(null),
  version: z.string().nullable().default(null),
  feedback_acc: z.number().min(0).max(1).nullable().default(null),
  feedback_holdout: integer().min(0).default(0),
});

export const TrainFailedSchema = z.object({
  type: z.literal("digits.train.failed.v1"),
  request_id: z.string(),
  user_id: integer().min(0),
  model_id: z.string(),
  run_id: z.string().nullable().default(null),
  ts: z.string().regex(new RegExp("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?(Z|\\+00:00)$", "u")),
  error_kind: z.enum(["user", "system"]),
  message: z.string(),
  attempt: integer().min(1).default(1),
  will_retry: z.boolean().default(false),
  cancelled: z.boolean().default(false),
});

export const ModelChangedSchema = z.object({
  type: z.literal("digits.model.changed.v1"),
  request_id: z.string(),
  user_id: integer().min(0),
  model_id: z.string(),
  run_id: z.string().nullable().default(null),
  ts: z.string().regex(new RegExp("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?(Z|\\+00:00)$", "u")),
  action: z.enum(["served", "unserved", "promoted", "rolled_back", "pinned", "unpinned", "held", "refused"]),
  by: z.enum(["operator", "gate"]),
  version: z.string().nullable().default(null),
  old_version: z.string().nullable().default(null),
  served: z.array(z.string()),
  reason: z.string().default(""),
});

export const TrainJobSchema = z.strictObject({
  type: z.literal("digits.train.v1").default("digits.train.v1"),
  request_id: z.string().regex(new RegExp("^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", "u")).optional(),
  user_id: integer().min(0).max(9223372036854775807).default(0),
  model_id: z.string().regex(new RegExp("^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", "u")),
  epochs: integer().min(1).max(500).default(1),
  batch_size: integer().min(0).max(8192).default(0),
  lr: z.number().gt(0).max(1).default(0.003),
  seed: integer().min(0).max(4294967295).default(42),
  augment: z.boolean().default(true),
  notes: z.string().refine((s) => [...s].length <= 1000, { message: "Invalid string: expected at most 1000 characters" }).default(""),
  use_feedback: z.boolean().default(false),
});

export const TrainJobFieldsSchema = z.strictObject({
  type: z.literal("digits.train.v1").default("digits.train.v1"),
  request_id: z.string().regex(new RegExp("^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", "u")).optional(),
  user_id: z.string().regex(new RegExp("^[+-]?[0-9]+$", "u")).default("0"),
  model_id: z.string().regex(new RegExp("^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", "u")),
  epochs: z.string().regex(new RegExp("^[+-]?[0-9]+$", "u")).default("1"),
  batch_size: z.string().regex(new RegExp("^[+-]?[0-9]+$", "u")).default("0"),
  lr: z.string().regex(new RegExp("^[+-]?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)([eE][+-]?[0-9]+)?$", "u")).default("0.003"),
  seed: z.string().regex(new RegExp("^[+-]?[0-9]+$", "u")).default("42"),
  augment: z.string().regex(new RegExp("^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|1|0|[Yy][Ee][Ss]|[Nn][Oo]|[Oo][Nn]|[Oo][Ff][Ff])$", "u")).default("true"),
  notes: z.string().refine((s) => [...s].length <= 1000, { message: "Invalid string: expected at most 1000 characters" }).default(""),
  use_feedback: z.string().regex(new RegExp("^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|1|0|[Yy][Ee][Ss]|[Nn][Oo]|[Oo][Nn]|[Oo][Ff][Ff])$", "u")).default("false"),
});

export const DigitsFeedbackV1FieldsSchema = z.object({
  type: z.literal("digits.feedback.v1").default("digits.feedback.v1"),
  request_id: z.string().regex(new RegExp("^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", "u")),
  label: z.string().regex(new RegExp("^[+-]?[0-9]+$", "u")),
  predicted: z.string().regex(new RegExp("^[+-]?[0-9]+$", "u")),
  confidence: z.string().regex(new RegExp("^[+-]?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)([eE][+-]?[0-9]+)?$", "u")),
  model_id: z.string(),
  user_id: z.string().regex(new RegExp("^[+-]?[0-9]+$", "u")).default("0"),
  ts: z.string().regex(new RegExp("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?(Z|\\+00:00)$", "u")),
  sample: z.string().refine((s) => [...s].length <= 1048, { message: "Invalid string: expected at most 1048 characters" }),
});

export const DeadLetterFieldsSchema = z.object({
  entry_id: z.string(),
  request_id: z.string(),
  reason: z.string(),
  deliveries: z.string().regex(new RegExp("^[+-]?[0-9]+$", "u")),
  ts: z.string().regex(new RegExp("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?(Z|\\+00:00)$", "u")),
  entry_fields: z.string(),
});

/** Any training event, picked by `type`; unknown fields are dropped, as Python does. */
export const TrainEventSchema = z.discriminatedUnion("type", [
  TrainStartedSchema,
  TrainBatchSchema,
  TrainEpochSchema,
  TrainBestSchema,
  TrainArtifactSchema,
  TrainUploadSchema,
  TrainPruneSchema,
  TrainCompletedSchema,
  TrainFailedSchema,
  ModelChangedSchema,
]);

/** An event document (the JSON in an entry's `event` field), checked; throws a ZodError. */
export function parseEvent(json: unknown): T.TrainEvent {
  return TrainEventSchema.parse(json);
}

/** `parseEvent` without throwing: `{ success: true, data }` or `{ success: false, error }`. */
export function safeParseEvent(json: unknown): z.ZodSafeParseResult<T.TrainEvent> {
  return TrainEventSchema.safeParse(json);
}

/** The event in a `digits:events` entry's fields (`type`, `event`), as `XREAD` returns them. */
export function parseEventEntry(fields: Readonly<Record<string, string>>): T.TrainEvent {
  const raw = fields["event"];
  if (raw === undefined) {
    throw new Error("expected an 'event' field holding the event as JSON");
  }
  const event = parseEvent(JSON.parse(raw));
  const kind = fields["type"];
  if (kind !== undefined && kind !== event.type) {
    throw new Error(`entry type ${kind} differs from the event's ${event.type}`);
  }
  return event;
}

type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
type Assert<Proof extends true> = Proof;

/** Compiles only while every schema yields exactly its type in types.ts. */
export type SchemasMatchTypes = [
  Assert<Same<z.output<typeof TrainStartedSchema>, T.TrainStarted>>,
  Assert<Same<z.output<typeof TrainBatchSchema>, T.TrainBatch>>,
  Assert<Same<z.output<typeof TrainEpochSchema>, T.TrainEpoch>>,
  Assert<Same<z.output<typeof TrainBestSchema>, T.TrainBest>>,
  Assert<Same<z.output<typeof TrainArtifactSchema>, T.TrainArtifact>>,
  Assert<Same<z.output<typeof TrainUploadSchema>, T.TrainUpload>>,
  Assert<Same<z.output<typeof TrainPruneSchema>, T.TrainPrune>>,
  Assert<Same<z.output<typeof TrainCompletedSchema>, T.TrainCompleted>>,
  Assert<Same<z.output<typeof TrainFailedSchema>, T.TrainFailed>>,
  Assert<Same<z.output<typeof ModelChangedSchema>, T.ModelChanged>>,
  Assert<Same<z.output<typeof TrainJobSchema>, T.TrainJob>>,
  Assert<Same<z.input<typeof TrainJobSchema>, T.TrainJobInput>>,
  Assert<Same<z.output<typeof TrainJobFieldsSchema>, T.TrainJobFields>>,
  Assert<Same<z.input<typeof TrainJobFieldsSchema>, T.TrainJobFieldsInput>>,
  Assert<Same<z.output<typeof DigitsFeedbackV1FieldsSchema>, T.DigitsFeedbackV1Fields>>,
  Assert<Same<z.input<typeof DigitsFeedbackV1FieldsSchema>, T.DigitsFeedbackV1FieldsInput>>,
  Assert<Same<z.output<typeof DeadLetterFieldsSchema>, T.DeadLetterFields>>,
  Assert<Same<z.output<typeof TrainEventSchema>, T.TrainEvent>>,
  Assert<Same<(typeof T.EVENT_TYPES)[number], T.TrainEventType>>,
];
