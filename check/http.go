package check

import (
	"context"
	"errors"
	"fmt"
	"net/url"

	"github.com/tunsocks/tunsocks/httpconnect"
)

// httpAuth checks an HTTP proxy's authentication: the URL's credentials
// must work, and with credentials given, none or wrong ones must be
// refused (407, or 401 as tinyproxy answers a wrong password).
func (c *checker) httpAuth(ctx context.Context) bool {
	try := func(user *url.Userinfo) (int, error) {
		u := c.proxyURL(nil)
		u.User = user
		hc, err := httpconnect.New(u, c.o.Dialer)
		if err != nil {
			return 0, err
		}
		dctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
		defer cancel()
		conn, err := hc.DialContext(dctx, "tcp", c.o.Target)
		if err == nil {
			conn.Close()
			return 200, nil
		}
		var se *httpconnect.StatusError
		if errors.As(err, &se) {
			return se.Code, nil
		}
		return 0, err
	}
	v := c.probe("http.auth", func() (Verdict, string) {
		code, err := try(c.o.Proxy.User)
		if err != nil {
			return Fail, fmt.Sprintf("CONNECT %s failed: %v", c.o.Target, err)
		}
		refused := func(code int) bool { return code == 407 || code == 401 }
		if refused(code) {
			if c.o.Proxy.User == nil {
				return Fail, "the proxy wants authentication (407); put the credentials in the URL: http://user:pass@" + c.o.Proxy.Host
			}
			return Fail, "the proxy rejects the URL's credentials (407)"
		}
		if c.o.Proxy.User == nil {
			if code == 200 {
				c.r.Facts.OpenProxy = ptr(true)
			}
			return Pass, fmt.Sprintf("no authentication asked (CONNECT answered %d)", code)
		}
		anon, err := try(nil)
		if err != nil {
			return Fail, fmt.Sprintf("CONNECT without credentials failed: %v", err)
		}
		wrong, err := try(url.UserPassword(c.user, c.pass+"-wrong"))
		if err != nil {
			return Fail, fmt.Sprintf("CONNECT with a wrong password failed: %v", err)
		}
		switch {
		case !refused(anon):
			c.r.Facts.OpenProxy = ptr(true)
			return Warn, fmt.Sprintf("the proxy serves clients without credentials (answered %d, not 407): anyone who reaches it can use it", anon)
		case !refused(wrong):
			c.r.Facts.OpenProxy = ptr(true)
			return Warn, fmt.Sprintf("the proxy accepts a wrong password too (answered %d, not 407)", wrong)
		}
		c.r.Facts.OpenProxy = ptr(false)
		return Pass, fmt.Sprintf("Basic authentication: the credentials work; none get %d, a wrong password %d", anon, wrong)
	})
	return v != Fail
}
