package schemas

// The memory-manager messages: their names, decoders, rules and encoders.

// Error codes of the memory-manager protocol. An AllocReply carries
// insufficient_ram (the fleet has no room: the task could not allocate RAM
// for its helpers), unknown_task (the request names no running task of that
// epoch), over_budget (the task holds all its budget allows), invalid (the
// request is malformed) or unavailable (the selector could not answer in
// time, or is not ready: the request may be retried). A HelperReply carries
// insufficient_ram (the host has no room), invalid (a malformed request, or a
// start older than a helper of a newer epoch of the same target), draining
// or failed (the executor could not start or stop the helper).
const (
	CodeUnknownTask = "unknown_task"
	CodeOverBudget  = "over_budget"
	CodeUnavailable = "unavailable"
)

var (
	allocCodes  = []string{CodeInsufficientRAM, CodeUnknownTask, CodeOverBudget, CodeInvalid, CodeUnavailable}
	helperCodes = []string{CodeInsufficientRAM, CodeInvalid, CodeDraining, CodeFailed}
	helperOps   = []string{HelperStart, HelperStop}
)

const (
	nameAllocRequest  = "alloc_request"
	nameAllocReply    = "alloc_reply"
	nameHelperRequest = "helper_request"
	nameHelperReply   = "helper_reply"
)

// MessageName implements Message.
func (AllocRequest) MessageName() string { return nameAllocRequest }

// MessageName implements Message.
func (AllocReply) MessageName() string { return nameAllocReply }

// MessageName implements Message.
func (HelperRequest) MessageName() string { return nameHelperRequest }

// MessageName implements Message.
func (HelperReply) MessageName() string { return nameHelperReply }

// DecodeAllocRequest strictly decodes and validates an AllocRequest.
func DecodeAllocRequest(b []byte) (AllocRequest, error) { return decodeMessage[AllocRequest](b) }

// DecodeAllocReply strictly decodes and validates an AllocReply.
func DecodeAllocReply(b []byte) (AllocReply, error) { return decodeMessage[AllocReply](b) }

// DecodeHelperRequest strictly decodes and validates a HelperRequest.
func DecodeHelperRequest(b []byte) (HelperRequest, error) { return decodeMessage[HelperRequest](b) }

// DecodeHelperReply strictly decodes and validates a HelperReply.
func DecodeHelperReply(b []byte) (HelperReply, error) { return decodeMessage[HelperReply](b) }

// Validate implements Message. min_mib is at most mib; every released
// helper id is a name.
func (m AllocRequest) Validate() error {
	c := checker{msg: nameAllocRequest}
	c.version(m.V)
	c.name("task_id", m.TaskID)
	c.positiveU("epoch", m.Epoch)
	c.name("target", m.Target)
	c.name("host", m.Host)
	c.mib("mib", m.MiB)
	c.mib("min_mib", m.MinMiB)
	if m.MinMiB > m.MiB {
		c.fail("min_mib", "exceeds mib")
	}
	for i, id := range m.Release {
		c.name(indexPath("release", i), id)
	}
	return c.result()
}

// Validate implements Message. A reply with an error makes no new grant;
// every grant names a helper and a host and carries at most MaxMiB.
func (m AllocReply) Validate() error {
	c := checker{msg: nameAllocReply}
	c.version(m.V)
	c.name("task_id", m.TaskID)
	c.grants("grants", m.Grants)
	c.grants("held", m.Held)
	if m.Error != nil {
		if len(m.Grants) > 0 {
			c.fail("grants", "set together with error")
		}
		c.replyError(m.Error, allocCodes)
	}
	return c.result()
}

func (c *checker) grants(field string, gs []HelperGrant) {
	for i := range gs {
		g := &gs[i]
		s := c.elem(field, i)
		s.name("helper_id", g.HelperID)
		s.name("host", g.Host)
		s.mib("mib", g.MiB)
		c.merge(s)
		if c.err != nil {
			return
		}
	}
}

// Validate implements Message. A start names its task's type and host; a
// stop may leave them empty (the selector may stop a helper whose task it
// does not know, an orphan).
func (m HelperRequest) Validate() error {
	c := checker{msg: nameHelperRequest}
	c.version(m.V)
	c.enum("op", m.Op, helperOps)
	c.name("helper_id", m.HelperID)
	c.name("task_id", m.TaskID)
	c.positiveU("epoch", m.Epoch)
	c.name("target", m.Target)
	if m.Op == HelperStart {
		c.name("type", m.Type)
		c.name("task_host", m.TaskHost)
	} else {
		c.optName("type", m.Type)
		c.optName("task_host", m.TaskHost)
	}
	c.mib("mib", m.MiB)
	return c.result()
}

// Validate implements Message.
func (m HelperReply) Validate() error {
	c := checker{msg: nameHelperReply}
	c.version(m.V)
	c.name("helper_id", m.HelperID)
	if m.Error != nil {
		c.replyError(m.Error, helperCodes)
	}
	return c.result()
}

// helperStatuses checks the helpers a HostStatus lists.
func (c *checker) helperStatuses(hs []HelperStatus) {
	for i := range hs {
		h := &hs[i]
		s := c.elem("helpers", i)
		s.name("helper_id", h.HelperID)
		s.name("task_id", h.TaskID)
		s.positiveU("epoch", h.Epoch)
		s.name("target", h.Target)
		s.mib("mib", h.MiB)
		c.merge(s)
		if c.err != nil {
			return
		}
	}
}

func (m *AllocRequest) normalize()  { setVersion(&m.V) }
func (m *AllocReply) normalize()    { setVersion(&m.V) }
func (m *HelperRequest) normalize() { setVersion(&m.V) }
func (m *HelperReply) normalize()   { setVersion(&m.V) }
