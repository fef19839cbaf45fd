package console

import (
	"bytes"
	"errors"
	"html/template"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/ferrydr/ferry/controller/api"
)

// pageData is what every template gets; Data is the page's own.
type pageData struct {
	Title string
	Nav   string // the highlighted menu entry; "" hides the menu (login)
	CSRF  string
	Error string
	Now   time.Time
	Data  any
}

func (c *Console) page(ss *session, nav, title string, data any) pageData {
	return pageData{Title: title, Nav: nav, CSRF: ss.csrf, Now: c.now(), Data: data}
}

var funcs = template.FuncMap{
	"rpo": func(s *float64) string {
		if s == nil {
			return "—"
		}
		return fmtSeconds(*s)
	},
	"rposecs": func(s *float64) string {
		if s == nil {
			return ""
		}
		return formatFloat(*s)
	},
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.Local().Format("2006-01-02 15:04:05")
	},
	"whenp": func(t *time.Time) string {
		if t == nil {
			return "—"
		}
		return t.Local().Format("2006-01-02 15:04:05")
	},
	"rfc3339": func(t *time.Time) string {
		if t == nil {
			return ""
		}
		return t.UTC().Format(time.RFC3339Nano)
	},
	"size": api.FormatSize,
	"pct":  func(f float64) string { return formatFloat(math.Round(f*1000) / 10) },
	"span": fmtDuration,
}

// formatFloat is the shortest exact decimal of f.
func formatFloat(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// parsePages parses each page with the shared layout.
func parsePages() map[string]*template.Template {
	out := map[string]*template.Template{}
	for _, name := range []string{"login", "overview", "machine", "confirm", "jobs", "job", "targets", "agents", "plans", "drills", "message"} {
		out[name] = template.Must(template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html"))
	}
	return out
}

// render executes a page into a buffer first, so a template error becomes
// a clean 500 instead of half a page.
func (c *Console) render(w http.ResponseWriter, status int, name string, d pageData) {
	if d.Now.IsZero() {
		d.Now = c.now()
	}
	var buf bytes.Buffer
	if err := c.pages[name].Execute(&buf, d); err != nil {
		c.log.Error("console template", "page", name, "err", err)
		http.Error(w, "console page failed: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// failed shows a backend error, with the status its API code maps to.
func (c *Console) failed(w http.ResponseWriter, ss *session, err error) {
	status := http.StatusInternalServerError
	var ae *api.Error
	if errors.As(err, &ae) {
		switch ae.Code {
		case api.CodeNotFound:
			status = http.StatusNotFound
		case api.CodeInvalid:
			status = http.StatusBadRequest
		case api.CodeConflict, api.CodeBusy, api.CodeExists:
			status = http.StatusConflict
		}
	}
	d := c.page(ss, "", "Error", nil)
	d.Error = err.Error()
	c.render(w, status, "message", d)
}

func (c *Console) notFound(w http.ResponseWriter, ss *session, what string) {
	d := c.page(ss, "", "Not found", nil)
	d.Error = what
	c.render(w, http.StatusNotFound, "message", d)
}
