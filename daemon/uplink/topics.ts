/**
 * The MQTT topic names of the contract (`P` = {topicPrefix}/{site.id}). Owns the
 * spelling of topics and the rule for ids that become a topic level; nothing else.
 */
export interface Topics {
  base: string
  status: string
  records: string
  ack: string
  pull: string
  cmd: string
  outlet(id: string): string
  pullAnswer(requestId: string): string
  cmdResult(id: string): string
}

/**
 * The level used when a command id or pull requestId cannot be a topic level
 * (missing, not a string, or containing '/', '+', '#', NUL): such requests are
 * still answered, on P/cmd/_invalid/result and P/pull/_invalid. A valid id must
 * start with a letter or digit, so no real id can collide with it.
 */
export const INVALID_LEVEL = '_invalid'

/** An id usable as one topic level: 1-128 characters, starts alphanumeric, no wildcards, '/' or control characters. */
export function isTopicLevel(id: unknown): id is string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: a topic level must not hold control characters, so the class names them
  return typeof id === 'string' && /^[A-Za-z0-9][^/+#\u0000-\u001f\u007f]{0,127}$/u.test(id)
}

export function topics(prefix: string, siteId: string): Topics {
  const base = `${prefix}/${siteId}`
  return {
    base,
    status: `${base}/status`,
    records: `${base}/records`,
    ack: `${base}/ack`,
    pull: `${base}/pull`,
    cmd: `${base}/cmd`,
    outlet: (id) => `${base}/outlets/${id}`,
    pullAnswer: (requestId) => `${base}/pull/${isTopicLevel(requestId) ? requestId : INVALID_LEVEL}`,
    cmdResult: (id) => `${base}/cmd/${isTopicLevel(id) ? id : INVALID_LEVEL}/result`,
  }
}
